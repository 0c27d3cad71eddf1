"""The ``sigreg-hf`` console script keeps every subcommand, and each one answers --help."""

from __future__ import annotations

import argparse

import pytest

from sigreg_hf.experiments.cli import build_parser, main

SUBCOMMANDS = ("quickstart", "train", "collect", "push", "evaluate")


def test_every_subcommand_is_there():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", [c for c in SUBCOMMANDS if c != "train"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and f"sigreg-hf {command}" in capsys.readouterr().out


def test_push_offers_overwrite_readme(capsys):
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    assert "--overwrite_readme" in capsys.readouterr().out


def test_train_passes_through_to_the_training_command_line(capsys):
    assert main(["train", "--list_recipes"]) == 0
    assert "27 recipes in" in capsys.readouterr().out
