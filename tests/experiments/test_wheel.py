"""A wheel install works away from the repository: the recipes, the card template and the metric ship inside it.

The wheel is built from a copy of the tracked sources (no network: ``--no-build-isolation``, ``--no-deps``),
installed into a fresh virtual environment outside the repository that sees this environment's packages
through a ``.pth`` line (the dependencies, not this checkout's editable ``sigreg_hf``), and the console script
runs from a folder outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sigreg_hf.experiments.recipes import PUBLISHED_TOP1

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def tracked_sources(destination: Path) -> Path:
    """Copy the files git tracks (what a release is built from) into ``destination``."""
    names = run(["git", "ls-files", "-z"], cwd=REPO).stdout.split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, Path]:
    """``(wheel, python of a fresh venv with the wheel installed)``, both outside the repository."""
    root = tmp_path_factory.mktemp("wheel")
    source = tracked_sources(root / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(root / "dist"), str(source)], cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("sigreg_hf-*.whl")
    venv = root / "venv"
    run([sys._base_executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    # the dependencies come from this environment; its .pth files (the editable sigreg_hf) are not processed
    Path(purelib.stdout.strip(), "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=root)
    return wheel, python


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_wheel_ships_the_app_data(wheel_env):
    wheel, _ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    recipes = [n for n in names if n.startswith("sigreg_hf/experiments/recipes/") and n.endswith(".yaml")]
    assert len(recipes) == 27
    assert "sigreg_hf/experiments/model_cards/sigreg_model_card.md" in names
    assert "sigreg_hf/experiments/metrics/top_k_accuracy/top_k_accuracy.py" in names
    assert "sigreg_hf/experiments/__init__.py" in names and "sigreg_hf/trainer.py" in names


def test_installed_console_script_lists_all_27_recipes_outside_the_repo(wheel_env, tmp_path):
    _, python = wheel_env
    where = run([str(python), "-c", "import sigreg_hf; print(sigreg_hf.__file__)"], cwd=tmp_path, env=clean_env())
    assert Path(where.stdout.strip()).is_relative_to(python.parent.parent), where.stdout  # the wheel, not the repo
    proc = run([str(python.parent / "sigreg-hf"), "train", "--list_recipes"], cwd=tmp_path, env=clean_env())
    assert "27 recipes in" in proc.stdout and str(REPO) not in proc.stdout
    assert all(name in proc.stdout for name in PUBLISHED_TOP1)


def test_installed_package_finds_its_card_template_and_metric(wheel_env, tmp_path):
    _, python = wheel_env
    code = (
        "from sigreg_hf.experiments.card import find_card_template\n"
        "from sigreg_hf.experiments.metrics import metric_path\n"
        "print(find_card_template()); print(metric_path())\n"
    )
    proc = run([str(python), "-c", code], cwd=tmp_path, env=clean_env())
    template, metric = (Path(line) for line in proc.stdout.split())
    venv = python.parent.parent
    assert template.is_file() and template.is_relative_to(venv) and metric.is_relative_to(venv)
    assert template.read_bytes() == (REPO / "sigreg_hf/experiments/model_cards/sigreg_model_card.md").read_bytes()
