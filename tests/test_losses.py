"""The SIGReg statistics: parity with the seed, closed forms, gradients, behaviour, errors."""

from __future__ import annotations

import math

import pytest
import torch

from sigreg_hf import SIGRegLoss, draw_projection, draw_sketch, sigreg_strong, sigreg_weak
from sigreg_hf.reference import seed_sigreg_strong, seed_sigreg_weak


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


SHAPES = [(256, 512), (64, 16), (1000, 30), (333, 100), (2, 3)]


# ----------------------------------------------------------------------------------------------
# parity with the seed's code (values and gradients, rel 1e-5)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (2.5, 0.7), (0.2, -1.0)])
def test_strong_matches_seed(n, c, scale, shift):
    x = torch.randn(n, c, generator=gen(n + c)) * scale + shift
    projection = draw_projection(c, 64, generator=gen(1))
    ours, ours_grad = value_and_grad(lambda v: sigreg_strong(v, projection=projection), x)
    seed, seed_grad = value_and_grad(lambda v: seed_sigreg_strong(v, projection), x)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert relative_error(ours, seed) < 1e-5
    assert relative_error(ours_grad, seed_grad) < 1e-5


@pytest.mark.parametrize("n,c", SHAPES)
@pytest.mark.parametrize("sketched", [True, False])
def test_weak_matches_seed(n, c, sketched):
    x = torch.randn(n, c, generator=gen(n * c)) @ torch.randn(c, c, generator=gen(3)) * 0.3 + 0.5
    sketch = draw_sketch(min(64, c), c, generator=gen(2)) if sketched else None
    ours, ours_grad = value_and_grad(lambda v: sigreg_weak(v, sketch=sketch, sketch_dim=max(64, c)), x)
    seed, seed_grad = value_and_grad(lambda v: seed_sigreg_weak(v, sketch), x)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert relative_error(ours, seed) < 1e-5
    assert relative_error(ours_grad, seed_grad) < 1e-5


def test_default_draws_follow_the_seed():
    """Without matrices, the draws are the seed's randn(C, K)/(norm+1e-6) and randn(k, C)/sqrt(C)."""
    x = torch.randn(300, 128, generator=gen(0))
    a = torch.randn(128, 64, generator=gen(7))
    a = a / (a.norm(p=2, dim=0, keepdim=True) + 1e-6)
    assert relative_error(sigreg_strong(x, generator=gen(7)), seed_sigreg_strong(x, a)) < 1e-5
    s = torch.randn(64, 128, generator=gen(8)) / math.sqrt(128)
    assert relative_error(sigreg_weak(x, generator=gen(8)), seed_sigreg_weak(x, s)) < 1e-6
    # C <= sketch_dim: no sketch at all (the seed's branch)
    small = torch.randn(300, 40, generator=gen(1))
    assert relative_error(sigreg_weak(small, generator=gen(8)), seed_sigreg_weak(small, None)) < 1e-6


def test_fresh_draw_without_generator_differs_between_calls():
    x = torch.randn(128, 96, generator=gen(0))
    assert sigreg_strong(x).item() != sigreg_strong(x).item()
    assert sigreg_weak(x).item() != sigreg_weak(x).item()


def full_grid_strong(x: torch.Tensor, projection: torch.Tensor, num_points: int, t_max: float) -> torch.Tensor:
    """The seed's formula with a general grid, in float64 (the integral without any folding)."""
    x, a = x.double(), projection.double()
    t = torch.linspace(-t_max, t_max, num_points, dtype=torch.float64)
    phi = torch.exp(-0.5 * t**2)
    ecf = torch.exp(1j * (x @ a).unsqueeze(2) * t).mean(dim=0)
    return (torch.trapz((ecf - phi).abs().square() * phi, t, dim=1) * x.shape[0]).mean()


@pytest.mark.parametrize("num_points,t_max", [(17, 5.0), (16, 3.0), (9, 2.0), (2, 1.0), (33, 5.0)])
def test_other_grids_are_exact(num_points, t_max):
    x = torch.randn(200, 12, generator=gen(5), dtype=torch.float64)
    projection = draw_projection(12, 10, generator=gen(6), dtype=torch.float64)
    ours = sigreg_strong(x, projection=projection, num_slices=10, num_points=num_points, t_max=t_max)
    assert ours.dtype == torch.float64
    assert relative_error(ours, full_grid_strong(x, projection, num_points, t_max)) < 1e-10


def test_strong_closed_form_single_point_mass():
    """All samples at 0: ecf = 1, so the integrand is (1 - phi)^2 phi; compare with a fine quadrature."""
    n = 10
    x = torch.zeros(n, 3, dtype=torch.float64)
    projection = torch.eye(3, dtype=torch.float64)
    t = torch.linspace(-5, 5, 17, dtype=torch.float64)
    phi = torch.exp(-0.5 * t**2)
    expected = torch.trapz((1 - phi) ** 2 * phi, t) * n
    got = sigreg_strong(x, projection=projection, num_slices=3)
    assert abs(got.item() - expected.item()) < 1e-12


def test_weak_closed_form_known_covariance():
    """Two samples (+v, -v): cov = 2 v v^T, so ||cov - I||_F has a closed form."""
    v = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    x = torch.cat([v, -v])
    cov = (2 * v.T @ v) / (1 + 1e-6)
    expected = torch.linalg.matrix_norm(cov - torch.eye(3, dtype=torch.float64))
    assert abs(sigreg_weak(x).item() - expected.item()) < 1e-12


def test_orthonormal_sketch_is_unbiased():
    sketch = draw_sketch(8, 32, sketch_type="orthonormal", generator=gen(0), dtype=torch.float64)
    assert torch.allclose(sketch @ sketch.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    # isotropic x: the orthonormal sketch sees cov ~ I (loss near the sampling floor), the Gaussian one does not
    x = torch.randn(20000, 32, generator=gen(1))
    unbiased = sigreg_weak(x, sketch_dim=8, sketch_type="orthonormal", generator=gen(2))
    assert unbiased.item() < 0.2


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------
def test_gradcheck_strong():
    x = torch.randn(12, 5, generator=gen(0), dtype=torch.float64, requires_grad=True)
    projection = draw_projection(5, 4, generator=gen(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: sigreg_strong(v, projection=projection, num_slices=4), (x,))
    # an even grid exercises the generic (non-doubling) kernel
    assert torch.autograd.gradcheck(
        lambda v: sigreg_strong(v, projection=projection, num_slices=4, num_points=10, t_max=2.0), (x,)
    )


def test_gradcheck_weak():
    x = torch.randn(10, 6, generator=gen(0), dtype=torch.float64, requires_grad=True)
    sketch = draw_sketch(3, 6, generator=gen(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: sigreg_weak(v, sketch=sketch), (x,))
    assert torch.autograd.gradcheck(lambda v: sigreg_weak(v), (x,))


def test_low_precision_inputs_compute_in_float32():
    x32 = torch.randn(500, 80, generator=gen(0))
    projection = draw_projection(80, 64, generator=gen(1))
    sketch = draw_sketch(64, 80, generator=gen(2))
    for dtype in (torch.bfloat16, torch.float16):
        low = x32.to(dtype).requires_grad_(True)
        strong = sigreg_strong(low, projection=projection)
        weak = sigreg_weak(low, sketch=sketch)
        assert strong.dtype == torch.float32 and weak.dtype == torch.float32
        rounded = low.detach().float()
        assert relative_error(strong, sigreg_strong(rounded, projection=projection)) < 1e-6
        assert relative_error(weak, sigreg_weak(rounded, sketch=sketch)) < 1e-6
        (strong + weak).backward()
        assert low.grad is not None and low.grad.dtype == dtype


def test_autocast_keeps_float32_statistics():
    x = torch.randn(400, 96, generator=gen(0))
    projection = draw_projection(96, 64, generator=gen(1))
    sketch = draw_sketch(64, 96, generator=gen(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        strong = sigreg_strong(x, projection=projection)
        weak = sigreg_weak(x, sketch=sketch)
    assert strong.dtype == torch.float32 and weak.dtype == torch.float32
    assert relative_error(strong, sigreg_strong(x, projection=projection)) < 1e-6
    assert relative_error(weak, sigreg_weak(x, sketch=sketch)) < 1e-6


# ----------------------------------------------------------------------------------------------
# the statistics rank distributions correctly
# ----------------------------------------------------------------------------------------------
N_RANK, C_RANK = 2048, 16


def bimodal(n: int, c: int) -> torch.Tensor:
    signs = torch.where(torch.rand(n, 1, generator=gen(4)) < 0.5, -1.0, 1.0)
    return torch.randn(n, c, generator=gen(3)) * 0.3 + signs * 3 / math.sqrt(c)


NON_GAUSSIAN = {
    "uniform": lambda n, c: torch.rand(n, c, generator=gen(2)),
    "bimodal": bimodal,
    "anisotropic": lambda n, c: torch.randn(n, c, generator=gen(5)) * torch.linspace(0.2, 3.0, c),
    "shifted": lambda n, c: torch.randn(n, c, generator=gen(6)) + 1.0,
    "collapsed_to_a_line": lambda n, c: torch.randn(n, 1, generator=gen(7)) * torch.ones(1, c) / math.sqrt(c),
}


@pytest.mark.parametrize("name", list(NON_GAUSSIAN))
def test_strong_ranks_gaussian_lowest(name):
    gaussian = torch.randn(N_RANK, C_RANK, generator=gen(1))
    base = sigreg_strong(gaussian, num_slices=128, generator=gen(10)).item()
    other = sigreg_strong(NON_GAUSSIAN[name](N_RANK, C_RANK), num_slices=128, generator=gen(10)).item()
    assert base < 2.0  # about 1.06 per slice in expectation on ideal Gaussian data
    assert other > 50 * base


@pytest.mark.parametrize("name", [n for n in NON_GAUSSIAN if n != "shifted"])
def test_weak_ranks_gaussian_lowest(name):
    gaussian = torch.randn(N_RANK, C_RANK, generator=gen(1))
    base = sigreg_weak(gaussian).item()
    other = sigreg_weak(NON_GAUSSIAN[name](N_RANK, C_RANK)).item()
    assert base < 0.6
    assert other > 5 * base


def test_weak_sees_only_second_moments_strong_sees_more():
    """A mean shift and a variance-matched uniform leave the covariance at I: weak is blind, strong is not."""
    n, c = 4096, 2
    gaussian = torch.randn(n, c, generator=gen(1))
    uniform = (torch.rand(n, c, generator=gen(2)) * 2 - 1) * math.sqrt(3)
    shifted = gaussian + 1.0
    assert abs(sigreg_weak(uniform).item() - sigreg_weak(gaussian).item()) < 0.1
    assert abs(sigreg_weak(shifted).item() - sigreg_weak(gaussian).item()) < 1e-4
    base = sigreg_strong(gaussian, generator=gen(3)).item()
    assert sigreg_strong(uniform, generator=gen(3)).item() > 10 * base
    assert sigreg_strong(shifted, generator=gen(3)).item() > 100 * base


# ----------------------------------------------------------------------------------------------
# descending the losses does what they promise
# ----------------------------------------------------------------------------------------------
def test_weak_descent_whitens_a_skewed_cloud():
    torch.manual_seed(0)
    mixing = torch.randn(8, 8, generator=gen(1)) * torch.linspace(0.1, 2.0, 8)
    x = torch.nn.Parameter(torch.randn(512, 8, generator=gen(0)) @ mixing + 2.0)
    optimizer = torch.optim.SGD([x], lr=2.0)

    def cov_error() -> float:
        centred = x.detach() - x.detach().mean(0)
        return float(torch.linalg.matrix_norm(centred.T @ centred / 511 - torch.eye(8)))

    before = cov_error()
    for _ in range(300):
        optimizer.zero_grad()
        sigreg_weak(x).backward()
        optimizer.step()
    assert before > 3.0
    assert cov_error() < 0.05 * before


def excess_kurtosis_of_projections(x: torch.Tensor, num_directions: int = 64) -> float:
    directions = torch.randn(x.shape[1], num_directions, generator=gen(99))
    p = x @ (directions / directions.norm(dim=0))
    p = (p - p.mean(0)) / p.std(0)
    return float((p**4).mean(0).mean() - 3.0)


def test_strong_descent_gaussianises_a_uniform_cloud():
    x = torch.nn.Parameter((torch.rand(1024, 2, generator=gen(0)) * 2 - 1) * math.sqrt(3))
    optimizer = torch.optim.Adam([x], lr=0.02)
    before = excess_kurtosis_of_projections(x.detach())
    draws = gen(1)
    for _ in range(300):
        optimizer.zero_grad()
        sigreg_strong(x, num_slices=16, generator=draws).backward()
        optimizer.step()
    after = excess_kurtosis_of_projections(x.detach())
    assert before < -0.5  # a uniform square's projections are platykurtic
    assert abs(after) < 0.25 * abs(before)


# ----------------------------------------------------------------------------------------------
# the module twin
# ----------------------------------------------------------------------------------------------
def test_module_twin_matches_functional():
    x = torch.randn(100, 80, generator=gen(0))
    strong = SIGRegLoss(mode="strong", num_slices=32, t_max=4.0)
    weak = SIGRegLoss(mode="weak", sketch_dim=16)
    assert strong(x, generator=gen(1)).item() == sigreg_strong(x, num_slices=32, t_max=4.0, generator=gen(1)).item()
    assert weak(x, generator=gen(1)).item() == sigreg_weak(x, sketch_dim=16, generator=gen(1)).item()
    assert "strong" in repr(strong) and "num_slices=32" in repr(strong)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: sigreg_strong(torch.randn(4, 3, 2)), r"2-D tensor \[N, C\].*\(4, 3, 2\)"),
        (lambda: sigreg_weak(torch.randn(7)), r"2-D tensor \[N, C\]"),
        (lambda: sigreg_strong(torch.randn(1, 8)), r"N = 2 samples.*N = 1"),
        (lambda: sigreg_weak(torch.randn(1, 8)), r"N = 2 samples"),
        (lambda: sigreg_weak(torch.ones(4, 3, dtype=torch.int64)), r"floating-point.*int64"),
        (lambda: sigreg_strong(torch.randn(8, 5), projection=torch.randn(4, 64)), r"\[5, 64\].*\(4, 64\)"),
        (lambda: sigreg_strong(torch.randn(8, 5), projection=torch.randn(5, 32)), r"num_slices"),
        (lambda: sigreg_weak(torch.randn(8, 5), sketch=torch.randn(3, 4)), r"\[k, 5\].*\(3, 4\)"),
        (lambda: sigreg_strong(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]])), r"NaN or Inf"),
        (lambda: sigreg_weak(torch.tensor([[0.0, 1.0], [float("inf"), 2.0]])), r"NaN or Inf"),
        (lambda: sigreg_strong(torch.randn(8, 5), num_slices=0), r"num_slices must be an integer >= 1"),
        (lambda: sigreg_strong(torch.randn(8, 5), num_points=1), r"num_points must be an integer >= 2"),
        (lambda: sigreg_strong(torch.randn(8, 5), t_max=-1.0), r"t_max must be a positive finite"),
        (lambda: sigreg_strong(torch.randn(8, 5), t_max=float("inf")), r"t_max must be a positive finite"),
        (lambda: sigreg_weak(torch.randn(8, 5), sketch_dim=0), r"sketch_dim must be an integer >= 1"),
        (lambda: sigreg_weak(torch.randn(8, 5), sketch_type="sparse"), r"sketch_type must be"),
        (lambda: sigreg_weak(torch.randn(8, 5), distributed="yes"), r"distributed must be True, False or 'auto'"),
        (lambda: sigreg_strong(torch.randn(8, 5), distributed=True), r"initialised torch.distributed"),
        (lambda: SIGRegLoss(mode="medium"), r"mode must be 'weak' or 'strong'"),
        (lambda: SIGRegLoss(mode="weak", distributed="yes"), r"distributed must be True, False or 'auto'"),
        (lambda: SIGRegLoss(mode="weak", distributed=True)(torch.randn(8, 5)), r"initialised torch.distributed"),
        (lambda: SIGRegLoss(mode="weak", num_slices=8), r"num_slices do not apply to mode='weak'"),
        (lambda: SIGRegLoss(mode="strong", sketch_dim=8), r"sketch_dim do not apply to mode='strong'"),
        (lambda: SIGRegLoss(mode="strong")(torch.randn(8, 5), sketch=torch.randn(2, 5)), r"sketch applies"),
        (lambda: SIGRegLoss(mode="weak")(torch.randn(8, 5), projection=torch.randn(5, 2)), r"projection applies"),
    ],
)
def test_errors_say_what_is_wrong(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("loss", "options"),
    [(sigreg_weak, {"sketch_dim": 6}), (sigreg_weak, {"sketch_dim": 6, "sketch_type": "orthonormal"}),
     (sigreg_weak, {"sketch_dim": 64}), (sigreg_strong, {"num_slices": 8}),
     (sigreg_strong, {"num_slices": 8, "normalization": "per_sample"})],
)  # fmt: skip
def test_a_sample_mask_gives_the_statistic_of_the_rows_it_keeps(loss, options):
    """sample_mask = selecting the rows, in value and gradient (rows left out get none), without the selection."""
    x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.3 + 0.2
    x.requires_grad_(True)
    keep = torch.rand(40, generator=torch.Generator().manual_seed(1)) > 0.4
    want = loss(x[keep], generator=torch.Generator().manual_seed(2), **options)
    got = loss(x, generator=torch.Generator().manual_seed(2), sample_mask=keep.int(), **options)
    (want_grad,) = torch.autograd.grad(want, x)
    (got_grad,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-14)
    assert not got_grad[~keep].any()
    module = SIGRegLoss("strong" if loss is sigreg_strong else "weak", **options)
    torch.testing.assert_close(module(x, generator=torch.Generator().manual_seed(2), sample_mask=keep), want)


def test_a_sample_mask_is_checked():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"sample_mask must be a \[N\] = \[6\] tensor"):
        sigreg_weak(x, sample_mask=torch.ones(5))
    with pytest.raises(ValueError, match=r"sample_mask must be a \[N\] = \[6\] tensor"):
        sigreg_strong(x, sample_mask=[1] * 6)
    one = torch.tensor([0, 0, 1, 0, 0, 0])
    for loss in (sigreg_weak, sigreg_strong):  # one row kept: too few samples, said as for a batch of one
        with pytest.raises(ValueError, match="at least N = 2 samples.*has N = 1"):
            loss(x, sample_mask=one)
        assert torch.isfinite(loss(x, sample_mask=one, check_finite=False))  # finite for the caller to mask


def test_module_can_be_built_before_the_process_group():
    """distributed=True is checked when the loss runs, not when the module is built (before accelerate/DDP)."""
    SIGRegLoss(mode="strong", distributed=True)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="torch.Tensor"):
        sigreg_weak([[1.0, 2.0], [3.0, 4.0]])


def test_chunked_kernel_equals_single_chunk(monkeypatch):
    """Row chunking in the strong loss's kernel (forward and recomputing backward) is exact."""
    import sigreg_hf.losses as losses

    x = torch.randn(50, 20, generator=gen(0))
    projection = draw_projection(20, 64, generator=gen(1))
    whole, whole_grad = value_and_grad(lambda v: sigreg_strong(v, projection=projection), x)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 8 * 64 * 7)  # 7 rows per chunk, ragged last chunk
    chunked, chunked_grad = value_and_grad(lambda v: sigreg_strong(v, projection=projection), x)
    assert relative_error(chunked, whole) < 1e-6
    assert relative_error(chunked_grad, whole_grad) < 1e-6


@pytest.mark.slow
def test_torch_compile_model_and_loss_matches_eager():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.GELU(), torch.nn.Linear(48, 32))
    projection = draw_projection(32, 16, generator=gen(1))
    sketch = draw_sketch(8, 32, generator=gen(2))
    x = torch.randn(96, 12, generator=gen(0))

    def step(inputs: torch.Tensor) -> torch.Tensor:
        hidden = model(inputs)
        strong = sigreg_strong(hidden, projection=projection, num_slices=16)
        return strong + sigreg_weak(hidden, sketch=sketch)

    explanation = torch._dynamo.explain(step)(x)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
    eager = step(x)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(step)(x)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    assert relative_error(compiled.detach(), eager.detach()) < 1e-5
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        assert relative_error(got, want) < 1e-4
