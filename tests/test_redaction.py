"""Secrets never reach a recorded command line or a pickled argument object (issue 11, item 1: the helpers)."""

from __future__ import annotations

from sigreg_hf.redaction import (
    REDACTED,
    is_secret_option,
    redact_command,
    redact_command_line,
    redact_text,
    without_secrets,
)

TOKEN = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuV"


def test_secret_options_are_redacted_in_both_spellings():
    argv = ["scripts/train.py", "--recipe", "mlp_sgd_weak", "--hub_token", TOKEN, f"--api-key={TOKEN}x",
            "--hub_model_id", "org/model", "--push_to_hub", "true"]  # fmt: skip
    assert redact_command(argv) == [
        "scripts/train.py", "--recipe", "mlp_sgd_weak", "--hub_token", REDACTED, f"--api-key={REDACTED}",
        "--hub_model_id", "org/model", "--push_to_hub", "true",
    ]  # fmt: skip


def test_a_token_anywhere_is_redacted():
    assert redact_command(["--output_dir", f"runs/{TOKEN}"]) == ["--output_dir", f"runs/{REDACTED}"]
    assert TOKEN not in redact_text(f"python train.py --x {TOKEN} --y")


def test_option_names():
    assert all(map(is_secret_option, ["--hub_token", "--HF_TOKEN", "--wandb-password", "--api_key=1", "--secret"]))
    assert not any(map(is_secret_option, ["--hub_model_id", "--tokenizer_name", "--max_tokens", "--sigreg_alpha"]))


def test_pickled_state_drops_token_strings():
    state = {"hub_token": TOKEN, "hub_model_id": "org/m", "pad_token": None, "seed": 3}
    assert without_secrets(state) == {"hub_token": None, "hub_model_id": "org/m", "pad_token": None, "seed": 3}
    assert state["hub_token"] == TOKEN  # the live object keeps it


def test_command_line_strings_are_redacted():
    line = f"python scripts/train.py --hub_token {TOKEN} --API_KEY='a b' --wandb-password=pw --hub_model_id org/m"
    assert redact_command_line(line) == (
        f"python scripts/train.py --hub_token {REDACTED} --API_KEY={REDACTED} --wandb-password={REDACTED} "
        "--hub_model_id org/m"
    )
    assert redact_command_line(f"train.py --note {TOKEN}") == f"train.py --note {REDACTED}"


def test_pickled_config_has_no_token_but_copies_keep_it(tmp_path):
    import copy
    import pickle

    from sigreg_hf import SIGRegConfig

    args = SIGRegConfig(output_dir=str(tmp_path), hub_token=TOKEN, sigreg_mode="weak")
    restored = pickle.loads(pickle.dumps(args))
    assert restored.hub_token is None and restored.sigreg_mode == "weak" and TOKEN.encode() not in pickle.dumps(args)
    assert copy.deepcopy(args).hub_token == TOKEN and copy.copy(args).hub_token == TOKEN
    assert args.hub_token == TOKEN
