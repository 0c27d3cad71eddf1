"""``scripts/reproduce.py``: run a set of recipes one after another and collect their results.

Each recipe runs as its own training process (``python -m sigreg_hf.experiments.cli_train``, the code behind
``scripts/train.py`` and ``sigreg-hf train``; run with plain ``python``, ``accelerate launch`` or
``torchrun``) with ``--output_dir <output_root>/<recipe>`` plus any extra arguments given after ``--``.
At the end (and after every run) the finished runs are put side by side with the seed's published
numbers in ``<output_root>/results_table.md`` / ``.csv`` and overlay plots
(:func:`sigreg_hf.experiments.collect.collect_results`). ``--dry_run`` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sigreg_hf.experiments.collect import collect_results
from sigreg_hf.experiments.recipes import list_recipes

#: The training entry point, run as a module so that a wheel install (no ``scripts/``) works too.
TRAIN_MODULE = "sigreg_hf.experiments.cli_train"


def select_recipes(patterns: Sequence[str] | None) -> list[str]:
    """Recipe names matching any of ``patterns`` (names or shell globs, e.g. ``mlp_*``); all when empty."""
    names = list_recipes()
    if not patterns:
        return names
    chosen: list[str] = []
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatch(n, pattern)]
        if not matched:
            raise ValueError(f"No recipe matches {pattern!r}; see `python scripts/train.py --list_recipes`.")
        chosen += [n for n in matched if n not in chosen]
    return chosen


def build_command(
    recipe: str,
    output_dir: Path,
    extra: Sequence[str] = (),
    *,
    launcher: str = "python",
    accelerate_config: str | None = None,
    nproc: int = 1,
) -> list[str]:
    """The command line that trains ``recipe`` into ``output_dir``."""
    script = ["-m", TRAIN_MODULE, "--recipe", recipe, "--output_dir", str(output_dir), *extra]
    if launcher == "python":
        return [sys.executable, *script]
    if launcher == "accelerate":
        config = ["--config_file", accelerate_config] if accelerate_config else []
        return [sys.executable, "-m", "accelerate.commands.launch", *config, *script]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *script]
    raise ValueError(f"Unknown launcher {launcher!r}; choose python, accelerate or torchrun.")


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description="Run recipes sequentially through scripts/train.py and collect their results. "
        "Arguments after `--` go to every train.py run, e.g. `-- --dataset_name DIR --max_steps 2`."
    )
    parser.add_argument("--recipes", nargs="*", default=None, help="Recipe names or globs (default: all 27).")
    parser.add_argument("--output_root", default="runs/reproduce", help="One sub-folder per recipe.")
    parser.add_argument("--launcher", choices=["python", "accelerate", "torchrun"], default="python")
    parser.add_argument("--accelerate_config", default=None, help="Config for --launcher accelerate.")
    parser.add_argument("--nproc", type=int, default=1, help="Processes per node for --launcher torchrun.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands, run nothing.")
    parser.add_argument("--skip_existing", action="store_true", help="Skip recipes whose results.json exists.")
    parser.add_argument("--stop_on_error", action="store_true", help="Stop at the first failing run.")
    parser.add_argument("--no_plots", action="store_true", help="Do not draw the overlay plots.")
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen recipes; return a process exit code (1 if any run failed)."""
    args, extra = parse_args(argv)
    recipes = select_recipes(args.recipes)
    root = Path(args.output_root)
    failed: list[str] = []
    done: list[Path] = []
    for i, recipe in enumerate(recipes, 1):
        out = root / recipe
        cmd = build_command(
            recipe, out, extra, launcher=args.launcher, accelerate_config=args.accelerate_config, nproc=args.nproc
        )
        if args.dry_run:
            print(shlex.join(cmd))
            continue
        if args.skip_existing and (out / "results.json").exists():
            print(f"[reproduce] {i}/{len(recipes)} {recipe}: results.json exists, skipped", flush=True)
            done.append(out)
            continue
        print(f"[reproduce] {i}/{len(recipes)} {recipe}: {shlex.join(cmd)}", flush=True)
        start = time.time()
        code = subprocess.call(cmd)
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"[reproduce] {recipe}: {status} in {time.time() - start:.0f}s", flush=True)
        if code != 0:
            failed.append(recipe)
            if args.stop_on_error:
                break
        elif (out / "results.json").exists():
            done.append(out)
            _collect(done, root, plots=not args.no_plots)
    if args.dry_run:
        return 0
    if done:
        print(_collect(done, root, plots=not args.no_plots))
    if failed:
        print(f"[reproduce] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _collect(run_dirs: list[Path], root: Path, *, plots: bool) -> str:
    _, markdown = collect_results(run_dirs, root, plots=plots)
    return markdown
