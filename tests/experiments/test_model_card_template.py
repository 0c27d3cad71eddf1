"""The model-card template lives in the package (so wheels have it); model_cards/ at the top is its readable copy."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_top_level_model_card_is_the_packaged_template():
    packaged = REPO_ROOT / "sigreg_hf" / "experiments" / "model_cards" / "sigreg_model_card.md"
    readable = REPO_ROOT / "model_cards" / "sigreg_model_card.md"
    assert readable.read_bytes() == packaged.read_bytes(), "edit sigreg_hf/experiments/model_cards/ and copy it here"
