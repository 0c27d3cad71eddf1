"""Shared fixtures: a tiny synthetic dataset in the CIFAR-100 Hub parquet schema, the real CIFAR-10 path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sigreg_hf.experiments.data.synthetic import write_synthetic_cifar100

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real CIFAR-10 tarball, beside the clone (../shared/data), present on the project's machines and CI.
CIFAR10_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """datasets' cache (and the local-folder copies beside it) in a session folder, not the user's HF cache.

    Set for this process (``datasets.config``) and for the commands the tests start (``HF_DATASETS_CACHE``).
    """
    import os

    import datasets

    cache = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    previous_config, previous_env = datasets.config.HF_DATASETS_CACHE, os.environ.get("HF_DATASETS_CACHE")
    datasets.config.HF_DATASETS_CACHE = Path(cache)
    os.environ["HF_DATASETS_CACHE"] = cache
    yield cache
    datasets.config.HF_DATASETS_CACHE = previous_config
    if previous_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = previous_env


@pytest.fixture(scope="session")
def synthetic_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder ``data/{train,test}-00000-of-00001.parquet`` with columns img / fine_label / coarse_label.

    64 train and 16 test images of 32x32, 100 classes (labels cycle, so the first 100 images would cover
    every class); written once per test session.
    """
    return write_synthetic_cifar100(tmp_path_factory.mktemp("synthetic_cifar100"), num_train=64, num_test=16)


@pytest.fixture(scope="session")
def synthetic_cifar100_balanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like :func:`synthetic_cifar100` with 10 classes x 20 train images, for subset/learning checks."""
    return write_synthetic_cifar100(
        tmp_path_factory.mktemp("synthetic_cifar10c"), num_train=200, num_test=50, num_classes=10
    )


@pytest.fixture
def single_thread():
    """Run torch on one thread (the test machines are small and shared; oversubscribed OpenMP stalls)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
