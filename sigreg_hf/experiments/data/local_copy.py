"""A local dataset folder is resolved once: later runs load a saved copy in milliseconds.

``datasets.load_dataset(folder)`` lists, resolves and hashes every data file of the folder on each call
(27 s for CIFAR-10's 60,000 JPEGs on 2 cores; docs/benchmarks.md) before it finds its own cache. The first load of a
folder here saves the loaded ``DatasetDict`` with ``save_to_disk`` under a key made of every file's relative
path, size and modification time (one ``os.scandir`` walk: a fraction of a second); later loads of the
unchanged folder read that copy, memory-mapped. Adding, removing or editing any file changes the key, so a
stale copy is never read. Image columns are saved as the files' paths (``save_to_disk`` would otherwise
embed every image), so an error still names the file, and a copy is small (about 3 MB for CIFAR-10).
Copies live under ``<datasets cache>/sigreg_hf_local_copies/<key>``; saving a folder's new state removes the
copies of its earlier states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

#: Bumped when what is saved changes, so that older copies are not read.
COPY_FORMAT = "2"
#: How an ``Image`` column is stored in a copy: the undecoded cell, a path (and bytes only when the source had them).
_IMAGE_CELL = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
COPIES_DIRNAME = "sigreg_hf_local_copies"
_COMPLETE_MARKER = "sigreg_hf_copy.json"


def folder_fingerprint(folder: str | os.PathLike[str], *, extra: str = "") -> tuple[str, int]:
    """``(hex digest, number of files)`` over every file's relative path, size and mtime under ``folder``.

    ``extra`` (e.g. the dataset configuration) enters the digest too. Hidden entries are included: anything
    that ``datasets`` might read changes the key.
    """
    root = Path(folder).resolve()
    digest = hashlib.blake2b(f"{COPY_FORMAT}|{root}|{extra}".encode(), digest_size=16)
    entries: list[str] = []
    stack = [(str(root), "")]  # (directory, its path relative to root with a trailing "/")
    while stack:
        directory, relative = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append((entry.path, f"{relative}{entry.name}/"))
                else:
                    st = entry.stat(follow_symlinks=True)
                    entries.append(f"{relative}{entry.name}\0{st.st_size}\0{st.st_mtime_ns}")
    entries.sort()
    for line in entries:
        digest.update(line.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest(), len(entries)


def copies_root(cache_dir: str | None = None) -> Path:
    """Where the copies are kept: ``cache_dir`` (the ``datasets`` cache by default) / ``sigreg_hf_local_copies``."""
    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / COPIES_DIRNAME


def load_local_folder(
    folder: str | os.PathLike[str], *, config_name: str | None = None, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """``datasets.load_dataset(folder, config_name)``, read from a saved copy when the folder is unchanged.

    The first call for a folder state loads it with ``datasets`` (its own resolution and cache) and saves
    the result; the copy is written to a temporary folder and renamed into place, so a run killed while
    saving, or two runs saving at once, never leave a partial copy that a later run would read.
    """
    start = time.perf_counter()
    key, num_files = folder_fingerprint(folder, extra=f"config={config_name}")
    target = copies_root(cache_dir) / key
    if (target / _COMPLETE_MARKER).exists():
        loaded = _restore_images(datasets.load_from_disk(str(target)), target)
        logger.info(
            "Dataset folder %s (%d files, unchanged) read from its saved copy %s in %.2f s.",
            folder, num_files, target, time.perf_counter() - start,
        )
        return loaded
    logger.info(
        "First use of dataset folder %s in this state (%d files): loading it with datasets and saving a copy at "
        "%s, so that later runs skip resolving every file.", folder, num_files, target,
    )
    loaded = datasets.load_dataset(str(folder), config_name, cache_dir=cache_dir)
    partial = target.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    images = {
        split: {
            name: datasets.Features({name: feature}).to_dict()[name]
            for name, feature in ds.features.items()
            if isinstance(feature, datasets.Image)
        }
        for split, ds in loaded.items()
    }
    as_paths = datasets.DatasetDict(
        {split: ds.cast(_features_with_paths(ds.features, images[split])) for split, ds in loaded.items()}
    )
    as_paths.save_to_disk(str(partial))
    (partial / _COMPLETE_MARKER).write_text(
        json.dumps(
            {"source": str(Path(folder).resolve()), "files": num_files, "config": config_name, "images": images}
        )
        + "\n"
    )
    try:
        partial.rename(target)
    except OSError as err:  # another run saved the same copy first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).exists():
            raise RuntimeError(
                f"{target} exists but is not a complete dataset copy (no {_COMPLETE_MARKER}); it was not written "
                "by this project's loader. Remove that folder and run again, or pass --local_copy false."
            ) from err
    _remove_superseded(target, source=str(Path(folder).resolve()), config_name=config_name)
    return _restore_images(datasets.load_from_disk(str(target)), target)


def _remove_superseded(current: Path, *, source: str, config_name: str | None) -> None:
    """Delete this loader's earlier copies of the same folder and configuration: the folder has left their state,
    so no run reads them again (a folder put back exactly as it was is copied anew). Only folders that carry this
    loader's completion marker naming that source are touched."""
    for other in current.parent.iterdir():
        if other == current or ".partial-" in other.name:
            continue
        try:
            info = json.loads((other / _COMPLETE_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if info.get("source") == source and info.get("config") == config_name:
            shutil.rmtree(other, ignore_errors=True)
            logger.info("Removed the copy %s of an earlier state of %s.", other, source)


def _features_with_paths(features: datasets.Features, image_columns: dict[str, dict]) -> datasets.Features:
    return datasets.Features({n: (dict(_IMAGE_CELL) if n in image_columns else f) for n, f in features.items()})


def _restore_images(copy: datasets.DatasetDict, target: Path) -> datasets.DatasetDict:
    """The saved copy with its image columns typed as the ``Image`` features they were.

    ``cast_column`` to a decodable feature retypes the Arrow table in memory (``cast`` would map over every row
    and write another copy of the table next to the saved one).
    """
    images = json.loads((target / _COMPLETE_MARKER).read_text())["images"]
    restored = {}
    for split, ds in copy.items():
        for name, spec in images.get(split, {}).items():
            ds = ds.cast_column(name, _image_feature(spec))
        restored[split] = ds
    return datasets.DatasetDict(restored)


def _image_feature(spec: dict) -> datasets.Image:
    return datasets.Features.from_dict({"image": spec})["image"]
