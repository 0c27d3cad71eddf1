"""Keep secrets out of everything a run writes: recorded command lines and pickled training arguments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["REDACTED", "is_secret_option", "redact_command", "redact_command_line", "redact_text", "without_secrets"]

REDACTED = "<redacted>"
#: Option names whose value is a secret: ``--hub_token``, ``--api_key``, ``--wandb-password``, ...
_SECRET_NAME = r"--?(?:[\w-]*[_-])?(?:token|secret|password|passwd|api[_-]?key|access[_-]?key)"
_SECRET_OPTION = re.compile(rf"^{_SECRET_NAME}$", re.I)
#: The same options inside one command-line string, with their value (``=v``, `` v`` or quoted).
_SECRET_OPTION_IN_TEXT = re.compile(rf"({_SECRET_NAME})(=|\s+)(\"[^\"]*\"|'[^']*'|\S+)", re.I)
#: Hugging Face user/org access tokens, wherever they appear.
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def is_secret_option(option: str) -> bool:
    """Whether ``option`` (e.g. ``--hub_token``) names a secret value."""
    return bool(_SECRET_OPTION.match(option.split("=", 1)[0]))


def redact_text(text: str) -> str:
    """``text`` with every Hugging Face token replaced by ``<redacted>``."""
    return _HF_TOKEN.sub(REDACTED, text)


def redact_command(argv: Sequence[str]) -> list[str]:
    """A command line safe to record: secret options' values and any HF token replaced by ``<redacted>``.

    Handles ``--hub_token VALUE`` and ``--hub_token=VALUE``.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-") and is_secret_option(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_text(arg))
    return out


def redact_command_line(command: str) -> str:
    """:func:`redact_command` for a command line held as one string (quoted values included)."""
    return redact_text(_SECRET_OPTION_IN_TEXT.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", command))


def without_secrets(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an object's ``__dict__`` with every ``*_token`` string field set to None (for pickling)."""
    return {
        key: (None if key.endswith("_token") and isinstance(value, str) else value) for key, value in state.items()
    }
