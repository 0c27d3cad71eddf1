"""Throughput of the training input pipeline, per worker process (``scripts/bench_data.py``).

Measures images/s of what one DataLoader worker does for a training batch: fetch rows with
``Dataset.__getitems__`` (as the DataLoader's fetcher does), decode (JPEG/PNG, or read the decoded-image
cache), RandomCrop + flip (+ RandAugment) + to-float + normalise, then collate and CutMix/MixUp. Runs on
one thread (DataLoader workers run with ``torch.set_num_threads(1)``). Optionally also a real
``DataLoader`` with several workers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sigreg_hf.experiments.data.cache import decode_images
from sigreg_hf.experiments.data.loading import load_image_classification_dataset
from sigreg_hf.experiments.data.mixing import ImageClassificationCollator
from sigreg_hf.experiments.data.transforms import ImageBatchTransform, build_train_transform, resolve_mean_std


@dataclass
class BenchResult:
    """One measured configuration."""

    source: str
    decode_cache: bool
    randaugment: bool
    mix: bool
    images: int
    seconds: float
    images_per_second: float
    num_workers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PipelineBench:
    """Loads a dataset once (raw and decode-cached) and times pipeline configurations on it."""

    def __init__(self, dataset_name: str, *, mean_std: str = "cifar10", seed: int = 0) -> None:
        self.raw = load_image_classification_dataset(dataset_name, eval_split=None)
        self.cached = decode_images(
            self.raw.train, image_column=self.raw.image_column, label_column=self.raw.label_column, image_size=32
        )
        self.mean, self.std = resolve_mean_std(mean_std)
        self.seed = seed

    def dataset_and_collator(
        self, *, decode_cache: bool, randaugment: bool, mix: bool
    ) -> tuple[Any, ImageClassificationCollator]:
        transform = build_train_transform(self.mean, self.std, randaugment_num_ops=2 if randaugment else 0)
        base = self.cached if decode_cache else self.raw.train
        ds = base.with_transform(
            ImageBatchTransform(
                transform, image_column=self.raw.image_column, label_column=self.raw.label_column, image_size=32,
                mark_for_mixing=True,
            )
        )
        return ds, ImageClassificationCollator(self.raw.num_classes, mix=mix, seed=self.seed)

    def run(
        self,
        *,
        decode_cache: bool,
        randaugment: bool,
        mix: bool,
        num_images: int = 5000,
        batch_size: int = 128,
        warmup_batches: int = 2,
    ) -> BenchResult:
        """Images/s of fetch + decode + augment + collate/mix in this process (one thread)."""
        ds, collate = self.dataset_and_collator(decode_cache=decode_cache, randaugment=randaugment, mix=mix)
        order = np.random.default_rng(self.seed).permutation(len(ds))
        batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        for b in batches[:warmup_batches]:
            collate(ds.__getitems__(b))
        done, i, start = 0, warmup_batches, time.perf_counter()
        while done < num_images:
            out = collate(ds.__getitems__(batches[i % len(batches)]))
            done += out["pixel_values"].shape[0]
            i += 1
        seconds = time.perf_counter() - start
        return BenchResult(self.raw.source, decode_cache, randaugment, mix, done, seconds, done / seconds)

    def run_dataloader(
        self,
        *,
        num_workers: int,
        num_images: int = 20000,
        batch_size: int = 128,
        decode_cache: bool = True,
        randaugment: bool = True,
        mix: bool = True,
    ) -> BenchResult:
        """Total images/s of a real shuffled ``DataLoader`` with ``num_workers`` workers (after start-up)."""
        ds, collate = self.dataset_and_collator(decode_cache=decode_cache, randaugment=randaugment, mix=mix)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, collate_fn=collate,
            persistent_workers=num_workers > 0,
        )
        done, start, it = 0, None, iter(loader)
        while done < num_images:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                continue
            if start is None:  # exclude worker start-up
                start = time.perf_counter()
                continue
            done += batch["pixel_values"].shape[0]
        seconds = time.perf_counter() - start
        return BenchResult(
            self.raw.source, decode_cache, randaugment, mix, done, seconds, done / seconds, num_workers
        )


def markdown_table(results: list[BenchResult]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| source | decode cache | RandAugment(2, 9) | CutMix/MixUp | workers | images | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        workers = "1 process, 1 thread" if r.num_workers == 0 else f"DataLoader x{r.num_workers}"
        lines.append(
            f"| {r.source} | {'yes' if r.decode_cache else 'no (decode every time)'} | "
            f"{'yes' if r.randaugment else 'no'} | {'yes' if r.mix else 'no'} | {workers} | {r.images} | "
            f"{r.images_per_second:,.0f} |"
        )
    return "\n".join(lines)
