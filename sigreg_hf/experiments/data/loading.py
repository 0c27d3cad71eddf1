"""Load an image-classification dataset through `datasets`, from wherever it lives.

One entry point, :func:`load_image_classification_dataset`, accepts

* a Hub id (default ``uoft-cs/cifar100``: columns ``img`` / ``fine_label``),
* a local folder of parquet files in the same schema (``data/train-*.parquet``, ``data/test-*.parquet``
  or ``train-*.parquet`` / ``test-*.parquet``),
* a folder written by ``Dataset(Dict).save_to_disk``,
* an ``imagefolder`` tree (``DIR/train/<class>/*.jpg``, ``DIR/test/<class>/*.jpg``), e.g. the real
  CIFAR-10 obtained with ``tar xzf cifar10-jpg.tar.gz -C DIR``.

The image and label columns are detected from the features (an ``Image`` feature; a ``ClassLabel``,
preferring ``fine_label`` then ``label``) and can be overridden. ``num_classes`` follows the dataset.
A Hub id that cannot be fetched (offline, or no network) fails within seconds with an error naming
the dataset, the offline variables and the local alternatives.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import datasets

from sigreg_hf.experiments.data.cache import check_label_range, read_labels
from sigreg_hf.experiments.data.local_copy import load_local_folder

DEFAULT_DATASET = "uoft-cs/cifar100"

#: Label-column names tried, in order, when no ``ClassLabel`` feature decides it.
LABEL_COLUMN_CANDIDATES = ("fine_label", "label", "labels", "target", "class", "coarse_label")
#: Image-column names tried, in order, when no ``Image`` feature decides it.
IMAGE_COLUMN_CANDIDATES = ("img", "image", "images", "pixel_values", "picture")


@dataclass
class ImageClassificationData:
    """The train and evaluation splits of an image-classification dataset plus what was detected."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    image_column: str
    label_column: str
    num_classes: int
    class_names: list[str] | None = None
    source: str = ""
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def id2label(self) -> dict[int, str]:
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return dict(enumerate(names))


class DatasetUnavailableError(RuntimeError):
    """The dataset could not be loaded (offline and not cached, or nothing usable at the path)."""


def _offline_flags() -> dict[str, str]:
    return {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k)}


def _is_offline() -> bool:
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in _offline_flags().values())


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection within ``timeout`` seconds.

    Behind a proxy (``HTTPS_PROXY`` / ``ALL_PROXY`` set) a direct connection proves nothing, so the probe is
    skipped and the Hub client decides.
    """
    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable_message(name: str, reason: str) -> str:
    return (
        f"Cannot load dataset {name!r}: {reason}.\n"
        "  - If it is already in the Hugging Face cache, set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 so it "
        "is read from the cache without network access.\n"
        "  - Otherwise pass a local copy to --dataset_name: a folder of parquet files in the same schema "
        "(data/train-*.parquet, data/test-*.parquet), a folder written by save_to_disk, or an imagefolder "
        "tree (DIR/train/<class>/*.jpg, DIR/test/<class>/*.jpg; e.g. the CIFAR-10 tarball unpacked with "
        "`tar xzf cifar10-jpg.tar.gz -C DIR`)."
    )


def _load_raw(
    name_or_path: str, config_name: str | None, cache_dir: str | None, local_copy: bool = True
) -> datasets.DatasetDict:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            suffix = path.suffix.lstrip(".")
            builder = {"parquet": "parquet", "arrow": "arrow", "csv": "csv", "json": "json"}.get(suffix)
            if builder is None:
                raise DatasetUnavailableError(
                    f"Dataset path {str(path)!r} is a file of unknown type; pass a folder (parquet files, "
                    "save_to_disk output or an imagefolder tree) or a Hub id."
                )
            return datasets.load_dataset(builder, data_files={"train": str(path)}, cache_dir=cache_dir)
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({"train": loaded})
            return loaded
        try:
            if local_copy:
                return load_local_folder(path, config_name=config_name, cache_dir=cache_dir)
            return datasets.load_dataset(str(path), config_name, cache_dir=cache_dir)
        except (FileNotFoundError, ValueError) as err:
            raise DatasetUnavailableError(
                f"Could not read a dataset from folder {str(path)!r} ({err}). Expected parquet files named by "
                "split (data/train-*.parquet, data/test-*.parquet), a save_to_disk folder, or an imagefolder "
                "tree DIR/<split>/<class>/<image>."
            ) from err
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise DatasetUnavailableError(f"Dataset folder {name_or_path!r} does not exist.")
    # A Hub id. Fail fast instead of letting the client retry for minutes when there is no network.
    if not _is_offline() and not _hub_reachable():
        raise DatasetUnavailableError(
            _unavailable_message(name_or_path, "the Hugging Face Hub is not reachable from this machine")
        )
    try:
        return datasets.load_dataset(name_or_path, config_name, cache_dir=cache_dir)
    except (ConnectionError, OSError) as err:
        flags = _offline_flags()
        reason = (
            f"offline mode is on ({', '.join(f'{k}={v}' for k, v in flags.items())}) and it is not cached"
            if _is_offline()
            else f"it could not be fetched ({type(err).__name__}: {err})"
        )
        raise DatasetUnavailableError(_unavailable_message(name_or_path, reason)) from err


def detect_columns(
    features: datasets.Features, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Return ``(image_column, label_column)`` for ``features``, honouring explicit choices.

    The image column is the first ``Image`` feature (else a conventional name); the label column is a
    ``ClassLabel`` feature, preferring ``fine_label`` then ``label`` (else a conventional integer column).
    """
    names = list(features)
    for chosen, kind in ((image_column, "image"), (label_column, "label")):
        if chosen is not None and chosen not in features:
            raise ValueError(f"--{kind}_column {chosen!r} is not a column of the dataset; columns are {names}.")
    if image_column is None:
        image_cols = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        image_cols += [n for n in IMAGE_COLUMN_CANDIDATES if n in features and n not in image_cols]
        if not image_cols:
            raise ValueError(f"No image column found among {names}; pass --image_column NAME.")
        image_column = image_cols[0]
    if label_column is None:
        class_cols = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        ranked = [n for n in LABEL_COLUMN_CANDIDATES if n in class_cols] + class_cols
        ranked += [n for n in LABEL_COLUMN_CANDIDATES if n in features]
        ranked = [n for n in ranked if n != image_column]
        if not ranked:
            raise ValueError(f"No label column found among {names}; pass --label_column NAME.")
        label_column = ranked[0]
    return image_column, label_column


def load_image_classification_dataset(
    name_or_path: str = DEFAULT_DATASET,
    *,
    config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = "test",
    cache_dir: str | None = None,
    local_copy: bool = True,
) -> ImageClassificationData:
    """Load the train (and evaluation) split of an image-classification dataset.

    Args:
        name_or_path: Hub id, parquet folder, ``save_to_disk`` folder or ``imagefolder`` tree.
        config_name: dataset configuration (Hub datasets with several).
        image_column / label_column: override the detected columns.
        train_split / eval_split: split names; ``eval_split=None`` loads no evaluation split.
        cache_dir: ``datasets`` cache directory (default: the library's).
        local_copy: a local data folder (imagefolder tree, parquet files) is read from a saved copy while it is
            unchanged (see :mod:`sigreg_hf.experiments.data.local_copy`); False resolves it with ``datasets``
            on every call.

    Raises:
        DatasetUnavailableError: the dataset cannot be reached or read (the message says what to do).
        ValueError: a named split or column does not exist.
    """
    raw = _load_raw(name_or_path, config_name, cache_dir, local_copy)
    available = list(raw)
    for split in (train_split, eval_split):
        if split is not None and split not in raw:
            raise ValueError(
                f"Split {split!r} not found in dataset {name_or_path!r}; available splits: {available}. "
                "Choose with --train_split / --eval_split."
            )
    train = raw[train_split]
    image_col, label_col = detect_columns(train.features, image_column, label_column)
    label_feature = train.features[label_col]
    train_labels = read_labels(train, label_col)
    if isinstance(label_feature, datasets.ClassLabel):
        num_classes, class_names = label_feature.num_classes, list(label_feature.names)
    else:  # a plain integer column: the classes are 0..max label of the training split
        if train_labels.size == 0:
            raise ValueError(f"Training split {train_split!r} of {name_or_path!r} is empty.")
        num_classes, class_names = int(train_labels.max()) + 1, None
    check_label_range(train_labels, num_classes, split=train_split, label_column=label_col)
    eval_ds = raw[eval_split] if eval_split is not None else None
    if eval_ds is not None:
        missing = [c for c in (image_col, label_col) if c not in eval_ds.features]
        if missing:
            raise ValueError(f"Evaluation split {eval_split!r} lacks columns {missing}.")
        check_label_range(read_labels(eval_ds, label_col), num_classes, split=eval_split, label_column=label_col)
    return ImageClassificationData(
        train=train,
        eval=eval_ds,
        image_column=image_col,
        label_column=label_col,
        num_classes=num_classes,
        class_names=class_names,
        source=str(name_or_path),
        splits={k: len(v) for k, v in raw.items()},
    )
