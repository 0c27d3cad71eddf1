"""BatchAugmentation (batched crop/flip/RandAugment/normalise on a uint8 batch) and the collator's mix_batch.

Exactness: with the same parameters, the batched output equals torchvision's per-image ops image by image.
Distribution: the batched path's crops, flips, RandAugment ops/signs and output pixels are distributed as
those of the per-image reference pipeline ``build_train_transform`` (fixed seeds, so nothing flakes; each
statistical test also checks that a deliberately wrong variant fails the same test).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sigreg_hf.experiments.data import BatchAugmentation, ImageClassificationCollator, build_train_transform
from sigreg_hf.experiments.data.batch_augment import BatchAugmentationParams
from sigreg_hf.experiments.data.transforms import MIX_MARKER, ROW_COLUMN, AugmentationClock

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
#: Thresholds: a correct implementation must give p above ACCEPT; a wrong variant must give p below REJECT.
ACCEPT = 1e-3
REJECT = 1e-6
OP_NAMES = tuple(v2.RandAugment._AUGMENTATION_SPACE)
SIGNED = {name for name, (_, signed) in v2.RandAugment._AUGMENTATION_SPACE.items() if signed}


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Half noise, half smooth gradients + blobs (so AutoContrast/Equalize/Posterize have something to do)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = torch.rand(n, 3, 1, 1, generator=g) * 60 + 40
    slope = torch.rand(n, 3, 1, 1, generator=g) * 3
    smooth = (base + slope * (yy + 0.5 * xx)).clamp(0, 255).to(torch.uint8)
    return torch.where((torch.arange(n) % 2 == 0)[:, None, None, None], noise, smooth)


def _seed_for_rand(negative: bool) -> int:
    """A seed after which ``torch.rand(())`` (v2.RandAugment's sign draw) negates (<= 0.5) or not."""
    for seed in range(100):
        torch.manual_seed(seed)
        if (float(torch.rand(())) <= 0.5) == negative:
            return seed
    raise AssertionError("unreachable")


def _reference_randaugment_round(image: torch.Tensor, name: str, negative: bool, magnitude: int) -> torch.Tensor:
    """One round of the real ``v2.RandAugment.forward`` on one image, with its op forced to ``name`` and its
    sign draw forced (through torch's global stream) to ``negative``: magnitude and sign come from torchvision."""
    ra = v2.RandAugment(num_ops=1, magnitude=magnitude)
    ra._get_random_item = lambda dct: (name, dct[name])  # the op draw
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for_rand(negative))  # the sign draw
        return ra(image)


def _reference_one(
    image: torch.Tensor, params: BatchAugmentationParams, i: int, aug: BatchAugmentation
) -> torch.Tensor:
    """Image ``i`` through torchvision's per-image ops with the parameters ``params`` gave it."""
    p = aug.padding
    out = F.pad(image, [p, p, p, p], fill=0, padding_mode="constant") if p else image
    out = F.crop(out, int(params.top[i]), int(params.left[i]), aug.crop_size, aug.crop_size)
    if bool(params.flip[i]):
        out = F.horizontal_flip(out)
    for r in range(params.ops.shape[0]):
        name = OP_NAMES[int(params.ops[r, i])]
        out = _reference_randaugment_round(out, name, bool(params.negate[r, i]), aug.randaugment_magnitude)
    out = v2.ToDtype(torch.float32, scale=True)(out)
    return v2.Normalize(mean=list(aug.mean), std=list(aug.std))(out)


# ---------------------------------------------------------------------------------------------- exactness
def test_op_table_is_torchvisions():
    aug = BatchAugmentation(mean=MEAN, std=STD, randaugment_num_ops=2, randaugment_magnitude=9)
    assert aug.op_names == OP_NAMES and len(OP_NAMES) == 14
    assert {n for n, s in zip(aug.op_names, aug.op_signed, strict=True) if s} == SIGNED


def test_batched_output_equals_per_image_ops_for_every_op_and_sign():
    """Round 1 forces every op on 4 images (2 negated, 2 not, for signed ops); round 2 is random, so rounds
    must compose in sequence. Every image must match torchvision's per-image ops exactly."""
    aug = BatchAugmentation(mean=MEAN, std=STD, randaugment_num_ops=2, randaugment_magnitude=9)
    n = 4 * len(OP_NAMES)
    drawn = aug.sample_params(n, 32, 32, torch.Generator().manual_seed(1))
    forced_ops = torch.arange(len(OP_NAMES)).repeat_interleave(4)
    forced_neg = torch.tensor([i % 2 == 1 for i in range(n)]) & aug._signed_mask[forced_ops]
    params = BatchAugmentationParams(
        top=drawn.top, left=drawn.left, flip=drawn.flip,
        ops=torch.stack([forced_ops, drawn.ops[1]]), negate=torch.stack([forced_neg, drawn.negate[1]]),
    )  # fmt: skip
    assert set(params.top.tolist()) == set(range(9)) and params.flip.any() and not params.flip.all()
    images = _images(n, seed=2)
    out = aug.apply(images, params)
    assert out.shape == (n, 3, 32, 32) and out.dtype == torch.float32
    for i in range(n):
        ref = _reference_one(images[i], params, i, aug)
        assert torch.equal(out[i], ref), (i, OP_NAMES[int(params.ops[0, i])], float((out[i] - ref).abs().max()))
    # Each op really changes images (so the comparison above is not vacuous), except Identity.
    plain = BatchAugmentation(mean=MEAN, std=STD).apply(images, params.__class__(
        top=params.top, left=params.left, flip=params.flip, ops=params.ops[:0], negate=params.negate[:0]))  # fmt: skip
    one_round = aug.apply(images, BatchAugmentationParams(
        top=params.top, left=params.left, flip=params.flip, ops=torch.stack([forced_ops, torch.zeros_like(forced_ops)]),
        negate=torch.stack([forced_neg, torch.zeros_like(forced_neg)])))  # fmt: skip
    changed = (one_round != plain).flatten(1).any(1)
    for op, name in enumerate(OP_NAMES):
        assert bool(changed[forced_ops == op].any()) == (name != "Identity"), name


@pytest.mark.parametrize(
    ("size", "crop_size", "padding", "hflip"), [(40, 32, 0, True), (36, 32, 2, False), (32, 24, 4, True)]
)
def test_crop_and_flip_exact_for_other_geometries(size, crop_size, padding, hflip):
    aug = BatchAugmentation(mean=MEAN, std=STD, crop_size=crop_size, padding=padding, hflip=hflip)
    images = _images(24, size=size, seed=3)
    params = aug.sample_params(24, size, size, torch.Generator().manual_seed(4))
    assert int(params.top.max()) <= size + 2 * padding - crop_size
    assert hflip or not params.flip.any()
    out = aug.apply(images, params)
    for i in range(24):
        assert torch.equal(out[i], _reference_one(images[i], params, i, aug))


# ---------------------------------------------------------------------------------------------- distribution
class _OffsetsZeroToSeven(BatchAugmentation):
    """Wrong on purpose: crop offsets in 0..7 instead of 0..8."""

    def sample_params(self, batch_size, height, width, generator=None):
        params = super().sample_params(batch_size, height, width, generator)
        return BatchAugmentationParams(params.top.clamp(max=7), params.left.clamp(max=7), params.flip,
                                       params.ops, params.negate)  # fmt: skip


class _ThirteenOpsNeverNegated(BatchAugmentation):
    """Wrong on purpose: the last op never drawn, magnitudes never negated."""

    def sample_params(self, batch_size, height, width, generator=None):
        params = super().sample_params(batch_size, height, width, generator)
        ops = torch.randint(0, self.num_ops - 1, params.ops.shape, generator=generator)
        return BatchAugmentationParams(params.top, params.left, params.flip, ops, torch.zeros_like(params.negate))


def _coded_image() -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 col + 1 (0 is only ever padding), channel 2 zero."""
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    return torch.stack([rows, rows.T, torch.zeros(32, 32, dtype=torch.long)]).to(torch.uint8)


def _decode_crop_flip(out: torch.Tensor, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) of each output of the coded image (mean 0, std 1, so values are uint8 / 255)."""
    values = (out * 255).round().long()
    index = torch.arange(values.shape[-1])
    row_profile = values[:, 0].amax(dim=2)  # [N, crop]: source row + 1, or 0 in the padding
    first = (row_profile > 0).long().argmax(dim=1)
    top = row_profile.gather(1, first[:, None])[:, 0] - 1 - first + padding
    col_profile = values[:, 1].amax(dim=1)
    nonzero = col_profile > 0
    first_c = torch.where(nonzero, index, 10**6).amin(dim=1)
    last_c = torch.where(nonzero, index, -1).amax(dim=1)
    flip = col_profile.gather(1, first_c[:, None])[:, 0] > col_profile.gather(1, last_c[:, None])[:, 0]
    col_profile = torch.where(flip[:, None], col_profile.flip(1), col_profile)
    first_c = (col_profile > 0).long().argmax(dim=1)
    left = col_profile.gather(1, first_c[:, None])[:, 0] - 1 - first_c + padding
    return top, left, flip


def _grid_pvalue(top: torch.Tensor, left: torch.Tensor, side: int = 9) -> float:
    counts = torch.bincount((top * side + left).clamp(0, side * side - 1), minlength=side * side).numpy()
    if top.min() < 0 or left.min() < 0 or top.max() >= side or left.max() >= side:
        return 0.0
    return float(stats.chisquare(counts).pvalue)


def test_crop_offsets_and_flips_match_the_reference_pipeline():
    coded = _coded_image()
    # Reference: the per-image pipeline, 3000 draws from torch's global stream (seeded).
    reference = build_train_transform((0.0,) * 3, (1.0,) * 3, crop_size=32, padding=4, hflip=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        ref_out = torch.stack([reference(coded) for _ in range(3000)])
    ref_top, ref_left, ref_flip = _decode_crop_flip(ref_out)
    # Batched: 9000 draws of the same image in one batch, decoded from the output pixels the same way.
    batch = coded.expand(9000, 3, 32, 32)
    aug = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3)
    top, left, flip = _decode_crop_flip(aug(batch, seed=12))
    params = aug.sample_params(9000, 32, 32, torch.Generator().manual_seed(12))
    assert torch.equal(top, params.top) and torch.equal(left, params.left) and torch.equal(flip, params.flip)

    assert _grid_pvalue(ref_top, ref_left) > ACCEPT  # the decoding reads the reference right
    assert _grid_pvalue(top, left) > ACCEPT  # uniform over the 9 x 9 grid
    table = np.stack([
        np.bincount((ref_top * 9 + ref_left).numpy(), minlength=81),
        np.bincount((top * 9 + left).numpy(), minlength=81),
    ])  # fmt: skip
    assert stats.chi2_contingency(table).pvalue > ACCEPT  # same distribution as the reference
    assert stats.binomtest(int(flip.sum()), len(flip), 0.5).pvalue > ACCEPT
    assert stats.binomtest(int(ref_flip.sum()), len(ref_flip), 0.5).pvalue > ACCEPT
    assert stats.chi2_contingency([[int(flip.sum()), int((~flip).sum())],
                                   [int(ref_flip.sum()), int((~ref_flip).sum())]]).pvalue > ACCEPT  # fmt: skip

    # Sanity: the same statistics catch offsets in 0..7.
    wrong = _OffsetsZeroToSeven(mean=(0.0,) * 3, std=(1.0,) * 3)
    w_top, w_left, _ = _decode_crop_flip(wrong(batch, seed=12))
    assert _grid_pvalue(w_top, w_left) < REJECT
    w_table = np.stack([table[0], np.bincount((w_top * 9 + w_left).numpy(), minlength=81)])
    assert stats.chi2_contingency(w_table[:, w_table.sum(0) > 0]).pvalue < REJECT


def _spy_reference_draws(num_images: int, seed: int) -> list[tuple[str, float]]:
    """(op name, signed magnitude) of every RandAugment round the per-image reference pipeline applies."""
    reference = build_train_transform(MEAN, STD, randaugment_num_ops=2, randaugment_magnitude=9)
    (ra,) = [t for t in reference.transforms if isinstance(t, v2.RandAugment)]
    draws: list[tuple[str, float]] = []
    apply = ra._apply_image_or_video_transform

    def spy(image, transform_id, magnitude, **kwargs):
        draws.append((transform_id, magnitude))
        return apply(image, transform_id, magnitude, **kwargs)

    ra._apply_image_or_video_transform = spy
    image = _images(1, seed=5)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(num_images):
            reference(image)
    return draws


def test_randaugment_ops_signs_and_magnitudes_match_the_reference():
    aug = BatchAugmentation(mean=MEAN, std=STD, randaugment_num_ops=2, randaugment_magnitude=9)
    params = aug.sample_params(20000, 32, 32, torch.Generator().manual_seed(21))
    ops, negate = params.ops.flatten(), params.negate.flatten()
    signed = aug._signed_mask[ops]
    counts = torch.bincount(ops, minlength=14).numpy()
    assert stats.chisquare(counts).pvalue > ACCEPT  # uniform over the 14 ops
    assert stats.binomtest(int(negate[signed].sum()), int(signed.sum()), 0.5).pvalue > ACCEPT
    assert not negate[~signed].any()

    draws = _spy_reference_draws(1500, seed=22)  # 3000 rounds
    ref_counts = np.array([sum(1 for n, _ in draws if n == name) for name in OP_NAMES])
    assert stats.chisquare(ref_counts).pvalue > ACCEPT
    assert stats.chi2_contingency(np.stack([ref_counts, counts])).pvalue > ACCEPT
    # The reference's magnitudes are exactly ours (same sign convention: +m or -m for signed ops only).
    by_op: dict[str, set[float]] = {}
    for name, magnitude in draws:
        by_op.setdefault(name, set()).add(magnitude)
    for op, name in enumerate(OP_NAMES):
        ours = {aug.op_magnitude(op, False), aug.op_magnitude(op, True)}
        assert by_op[name] == ours, (name, by_op[name], ours)
    ref_signs = Counter(m < 0 for n, m in draws if n in SIGNED and m != 0)
    sign_table = [[ref_signs[True], ref_signs[False]], [int(negate[signed].sum()), int((~negate[signed]).sum())]]
    assert stats.chi2_contingency(sign_table).pvalue > ACCEPT

    # Sanity: the same tests catch a missing op and missing negative signs.
    wrong = _ThirteenOpsNeverNegated(mean=MEAN, std=STD, randaugment_num_ops=2).sample_params(
        20000, 32, 32, torch.Generator().manual_seed(21))  # fmt: skip
    w_counts = torch.bincount(wrong.ops.flatten(), minlength=14).numpy()
    assert stats.chisquare(w_counts).pvalue < REJECT
    w_signed = aug._signed_mask[wrong.ops.flatten()]
    assert stats.binomtest(int(wrong.negate.flatten()[w_signed].sum()), int(w_signed.sum()), 0.5).pvalue < REJECT


def _summaries(out: torch.Tensor) -> dict[str, np.ndarray]:
    return {"mean": out.mean(dim=(1, 2, 3)).numpy(), "std": out.std(dim=(1, 2, 3)).numpy(),
            "pixel": out[:, 0, 16, 16].numpy()}  # fmt: skip


def test_output_pixels_distributed_as_the_reference_pipeline():
    """Two-sample KS tests on per-image summaries of the output (mean, std, one pixel) over 2500 draws of one
    source image: batched path vs the per-image reference pipeline."""
    image = _images(2, seed=7)[1]  # a smooth one: summaries then move with crops and ops
    n = 2500
    reference = build_train_transform(MEAN, STD, randaugment_num_ops=2, randaugment_magnitude=9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(31)
        ref = _summaries(torch.stack([reference(image) for _ in range(n)]))
    batch = image.expand(n, 3, 32, 32)
    kwargs = {"mean": MEAN, "std": STD, "randaugment_num_ops": 2, "randaugment_magnitude": 9}
    ours = _summaries(BatchAugmentation(**kwargs)(batch, seed=32))
    for key in ref:
        assert stats.ks_2samp(ours[key], ref[key]).pvalue > ACCEPT, key

    # Sanity: the same KS tests catch wrong variants (wrong op/sign draws, wrong magnitude, one round only).
    variants = {
        "13 ops, never negated": _ThirteenOpsNeverNegated(**kwargs),
        "magnitude 15": BatchAugmentation(**{**kwargs, "randaugment_magnitude": 15}),
        "one round": BatchAugmentation(**{**kwargs, "randaugment_num_ops": 1}),
    }
    for label, variant in variants.items():
        wrong = _summaries(variant(batch, seed=32))
        assert min(stats.ks_2samp(wrong[k], ref[k]).pvalue for k in ref) < REJECT, label


# ---------------------------------------------------------------------------------------------- mix_batch
def _features(rows: list[int], num_classes: int) -> list[dict]:
    g = torch.Generator().manual_seed(sum(rows))
    return [{"pixel_values": torch.randn(3, 8, 8, generator=g), "labels": r % num_classes, MIX_MARKER: True,
             ROW_COLUMN: r} for r in rows]  # fmt: skip


@pytest.mark.parametrize("keyed", [True, False])
def test_mix_batch_equals_the_collators_call(keyed):
    num_classes = 10
    clock = AugmentationClock(seed=5, epoch=2)

    def collator():
        return ImageClassificationCollator(num_classes, mix=True, seed=9, clock=clock if keyed else None)

    for rows in ([0, 1, 2, 3, 4], [7, 3, 11], [2]):
        features = _features(rows, num_classes)
        via_call = collator()(features)
        pixels = torch.stack([f["pixel_values"] for f in features])
        labels = torch.tensor([f["labels"] for f in features])
        mixed, soft = collator().mix_batch(pixels, labels, rows)
        assert torch.equal(mixed, via_call["pixel_values"]) and torch.equal(soft, via_call["labels"])
        assert soft.dtype == torch.float32 and soft.shape == (len(rows), num_classes)
        torch.testing.assert_close(soft.sum(1), torch.ones(len(rows)))
    with pytest.raises(ValueError, match="rows"):
        collator().mix_batch(pixels, labels, [1, 2, 3, 4])


def test_mix_batch_weights_distribution():
    """CutMix vs MixUp ~ Bernoulli(switch_prob 0.5); MixUp lambda ~ Beta(0.8, 0.8); soft targets sum to 1 per
    row and match the pixels (each image is the constant value of its label, so its weights can be read back)."""
    collator = ImageClassificationCollator(4, mix=True, clock=AugmentationClock(seed=1))
    labels = torch.arange(4)
    pixels = labels.float().view(4, 1, 1, 1).expand(4, 3, 8, 8)
    choices, mixup_lams = [], []
    for b in range(3000):
        mixed, soft = collator.mix_batch(pixels, labels, [4 * b, 4 * b + 1, 4 * b + 2, 4 * b + 3])
        torch.testing.assert_close(soft.sum(1), torch.ones(4))
        choices.append(collator.last_choice)
        # Row 0 mixes image/label 0 (weight lam) with image/label 3 (the batch rolled by one, weight 1 - lam).
        lam = float(soft[0, 0])
        if collator.last_choice == "mixup":
            mixup_lams.append(lam)
            torch.testing.assert_close(mixed[0], torch.full((3, 8, 8), 3 * (1 - lam)))
        else:  # CutMix: lam is the share of image 0's pixels left (corrected to the clipped box)
            assert math.isclose(float((mixed[0] == 0).float().mean()), lam, abs_tol=1e-6)
    assert set(choices) == {"mixup", "cutmix"}
    assert stats.binomtest(choices.count("cutmix"), len(choices), 0.5).pvalue > ACCEPT
    assert stats.kstest(mixup_lams, stats.beta(0.8, 0.8).cdf).pvalue > ACCEPT
    assert stats.kstest(mixup_lams, stats.beta(2.0, 2.0).cdf).pvalue < REJECT  # sanity: the test has power


# ---------------------------------------------------------------------------------------------- determinism, devices
def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_same_seed_same_output_and_params_drawn_on_cpu(device):
    aug = BatchAugmentation(mean=MEAN, std=STD, randaugment_num_ops=2)
    images = _images(16, seed=8).to(device)
    first = aug(images, seed=3)
    assert first.device.type == device and first.shape == (16, 3, 32, 32)
    assert torch.equal(first, aug(images, seed=3))
    assert torch.equal(first, aug(images, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, aug(images, seed=4))
    params = aug.sample_params(16, 32, 32, torch.Generator().manual_seed(3))
    assert all(t.device.type == "cpu" for t in (params.top, params.left, params.flip, params.ops, params.negate))
    assert torch.equal(first, aug.apply(images, params))
    if device != "cpu":  # the draws, hence the crops/flips/ops, do not depend on the device
        torch.testing.assert_close(first.cpu(), aug(images.cpu(), seed=3), atol=2 / 255 / min(STD), rtol=0)
    # Without seed or generator: torch's default CPU generator.
    torch.manual_seed(0)
    a = aug(images)
    torch.manual_seed(0)
    assert torch.equal(a, aug(images))


@pytest.mark.parametrize("num_ops", [0, 2])
def test_meta_device_batch(num_ops):
    """A batch on a device other than the CPU (here meta, no data) goes through; the draws stay on the CPU."""
    aug = BatchAugmentation(mean=MEAN, std=STD, randaugment_num_ops=num_ops)
    out = aug(torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta"), seed=0)
    assert out.device.type == "meta" and out.shape == (8, 3, 32, 32) and out.dtype == torch.float32


@pytest.mark.parametrize("device", _devices())
def test_mix_batch_on_device(device):
    collator = ImageClassificationCollator(5, mix=True, clock=AugmentationClock(seed=2))
    pixels, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, soft = collator.mix_batch(pixels.to(device), labels.to(device), list(range(6)))
    assert mixed.device.type == device and soft.device.type == device
    ref_mixed, ref_soft = collator.mix_batch(pixels, labels, list(range(6)))
    torch.testing.assert_close(mixed.cpu(), ref_mixed)
    torch.testing.assert_close(soft.cpu(), ref_soft)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"padding": -1}, "padding must be a non-negative int"),
        ({"padding": 2.5}, "padding must be a non-negative int"),
        ({"crop_size": 0}, "crop_size must be a positive int"),
        ({"randaugment_num_ops": -1}, "randaugment_num_ops"),
        ({"randaugment_magnitude": 31}, r"randaugment_magnitude must be an int in \[0, 30\]"),
        ({"mean": (0.5, 0.5)}, "mean and std need 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "std values must be positive"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchAugmentation(**{"mean": MEAN, "std": STD, **kwargs})


def test_input_validation():
    aug = BatchAugmentation(mean=MEAN, std=STD, crop_size=32, padding=4)
    with pytest.raises(ValueError, match="must be uint8"):
        aug(torch.rand(2, 3, 32, 32), seed=0)
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        aug(torch.zeros(3, 32, 32, dtype=torch.uint8), seed=0)
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), seed=0)
    with pytest.raises(ValueError, match="larger than the padded image"):
        aug(torch.zeros(2, 3, 20, 32, dtype=torch.uint8), seed=0)
    with pytest.raises(ValueError, match="either generator or seed"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), seed=0, generator=torch.Generator())
    params = aug.sample_params(3, 32, 32, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch of 3"):
        aug.apply(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), params)
    with pytest.raises(ValueError, match="batch_size"):
        aug.sample_params(0, 32, 32)
