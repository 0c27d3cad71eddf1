"""soft_target_loss: the MixUp/CutMix ``compute_loss_func`` against the closed form, and its accumulation scaling."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import ImageClassifierOutput

from sigreg_hf.soft_targets import soft_target_cross_entropy, soft_target_loss


def _batch(b: int = 4, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g)
    soft = torch.softmax(torch.randn(b, c, generator=g), dim=-1)
    hard = torch.randint(0, c, (b,), generator=g)
    return logits, soft, hard


def test_soft_and_hard_targets_match_the_closed_form():
    logits, soft, hard = _batch()
    log_p = torch.log_softmax(logits, dim=-1)
    expected_soft = -(soft * log_p).sum(-1).mean()
    outputs = ImageClassifierOutput(logits=logits)
    torch.testing.assert_close(soft_target_loss(outputs, soft), expected_soft)
    torch.testing.assert_close(soft_target_cross_entropy(logits, soft), expected_soft)
    torch.testing.assert_close(soft_target_loss(logits, hard), torch.nn.functional.cross_entropy(logits, hard))
    ignored = hard.clone()
    ignored[1] = -100
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(
        soft_target_loss({"logits": logits}, ignored), torch.nn.functional.cross_entropy(logits[kept], hard[kept])
    )


def test_accumulated_micro_batches_sum_to_the_full_batch_mean():
    """The Trainer's num_items_in_batch counts label elements: B*C for soft targets, B for class indices."""
    (l1, s1, h1), (l2, s2, h2) = _batch(seed=1), _batch(seed=2)
    full_soft = soft_target_loss(torch.cat([l1, l2]), torch.cat([s1, s2]))
    items = torch.tensor(float(s1.numel() + s2.numel()))
    torch.testing.assert_close(soft_target_loss(l1, s1, items) + soft_target_loss(l2, s2, items), full_soft)
    full_hard = soft_target_loss(torch.cat([l1, l2]), torch.cat([h1, h2]))
    torch.testing.assert_close(soft_target_loss(l1, h1, 8) + soft_target_loss(l2, h2, 8), full_hard)


def test_bad_targets_fail_clearly():
    logits, soft, _ = _batch()
    with pytest.raises(ValueError, match=r"logits' shape \[B, num_classes\]"):
        soft_target_loss(logits, soft[:, :3])
    with pytest.raises(ValueError, match="needs labels"):
        soft_target_loss(logits, None)
