"""sigreg_sketch_type: the seed's Gaussian matrices by default, orthonormal ones on request, end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import HfArgumentParser

from sigreg_hf import SIGRegConfig
from sigreg_hf.experiments.record import group_runs_by_setting
from sigreg_hf.losses import draw_sketch, sigreg_strong, sigreg_weak
from sigreg_hf.taps import SIGRegulariser, step_generator


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 96), nn.ReLU(), nn.Linear(96, 4))


@pytest.mark.parametrize("mode", ["weak", "strong"])
def test_regulariser_uses_the_chosen_matrices(mode):
    model, x = _mlp(), torch.randn(32, 12)
    hidden = model[0](x)
    generator = step_generator(3, 2, 0)
    if mode == "weak":
        gaussian = sigreg_weak(hidden, sketch_dim=8, generator=step_generator(3, 2, 0))
        ortho = sigreg_weak(hidden, sketch_dim=8, sketch_type="orthonormal", generator=generator)
    else:
        gaussian = sigreg_strong(hidden, num_slices=8, generator=step_generator(3, 2, 0))
        projection = draw_sketch(8, 96, sketch_type="orthonormal", generator=generator).T
        torch.testing.assert_close(projection.T @ projection, torch.eye(8), atol=1e-5, rtol=0)
        ortho = sigreg_strong(hidden, num_slices=8, projection=projection)
    got = {}
    for sketch_type in ("gaussian", "orthonormal"):
        reg = SIGRegulariser(model, mode=mode, layers=["0"], pooling="none", sketch_dim=8, seed=3,
                             sketch_type=sketch_type)  # fmt: skip
        with reg:
            model(x)
            got[sketch_type] = reg.loss(step=2)
    torch.testing.assert_close(got["gaussian"], gaussian)
    torch.testing.assert_close(got["orthonormal"], ortho)
    assert not torch.allclose(got["gaussian"], got["orthonormal"])


def test_config_parses_and_validates_sketch_type(tmp_path):
    (args,) = HfArgumentParser(SIGRegConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--sigreg_mode", "weak", "--sigreg_sketch_type", "orthonormal"]
    )
    assert args.sigreg_sketch_type == "orthonormal"
    assert SIGRegulariser.from_args(_mlp(), args).sketch_type == "orthonormal"
    assert SIGRegConfig(output_dir=str(tmp_path)).sigreg_sketch_type == "gaussian"
    with pytest.raises(ValueError, match=r"sigreg_sketch_type must be one of \('gaussian', 'orthonormal'\)"):
        SIGRegConfig(output_dir=str(tmp_path), sigreg_sketch_type="qr")
    with pytest.raises(ValueError, match=r"^sketch_type must be one of \('gaussian', 'orthonormal'\)"):
        SIGRegulariser(_mlp(), sketch_type="haar")


def test_collect_keeps_alphas_and_sketches_apart():
    runs = [
        {"recipe": "mlp_sgd_weak", "sigreg_mode": "weak", "sigreg_alpha": a, "sigreg_sketch_type": s, "seed": seed}
        for a, s in ((0.1, "gaussian"), (0.3, "gaussian"), (0.1, "orthonormal"))
        for seed in (0, 1)
    ] + [{"recipe": "mlp_sgd_none", "sigreg_mode": "none", "sigreg_alpha": 0.0, "seed": 0}]
    groups = group_runs_by_setting(runs)
    assert [len(g) for g in groups] == [2, 2, 2, 1]
    assert [(g[0]["sigreg_alpha"], g[0].get("sigreg_sketch_type")) for g in groups[:3]] == [
        (0.1, "gaussian"), (0.3, "gaussian"), (0.1, "orthonormal")
    ]  # fmt: skip
    # a record written before the field existed means the Gaussian sketch
    legacy = {"recipe": "mlp_sgd_weak", "sigreg_mode": "weak", "sigreg_alpha": 0.1, "seed": 2}
    assert len(group_runs_by_setting([runs[0], legacy])) == 1
