#!/usr/bin/env python
"""Images/s of the training input pipeline per worker process (decode + crop + flip + RandAugment + normalise,
then CutMix/MixUp), from JPEG every time and from the decoded-image cache.

    python scripts/bench_data.py                       # real CIFAR-10 from ../shared/data if present
    python scripts/bench_data.py --dataset_name DIR --num_images 10000 --num_workers 4 --output_json bench.json

Without --dataset_name it unpacks ../shared/data/cifar10-jpg.tar.gz (beside the clone) to a temporary folder,
or falls back to a synthetic CIFAR-100-schema set (PNG) when that is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import tempfile
from pathlib import Path

import torch

from sigreg_hf.experiments.data.bench import PipelineBench, markdown_table
from sigreg_hf.experiments.data.synthetic import write_synthetic_cifar100

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=None, help="Dataset (default: real CIFAR-10, else synthetic).")
    parser.add_argument("--num_images", type=int, default=5000, help="Images timed per configuration.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, nargs="*", default=[], help="Also time a DataLoader with N workers.")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)  # what a DataLoader worker does
    with tempfile.TemporaryDirectory() as tmp:
        name = args.dataset_name
        if name is None and CIFAR10_TARBALL.exists():
            with tarfile.open(CIFAR10_TARBALL) as tar:
                tar.extractall(Path(tmp) / "cifar10", filter="data")
            name = str(Path(tmp) / "cifar10")
        elif name is None:
            name = str(write_synthetic_cifar100(Path(tmp) / "synthetic", num_train=5000, num_test=10))
        bench = PipelineBench(name)
        results = []
        for decode_cache in (False, True):
            for randaugment in (False, True):
                for mix in ((False, True) if randaugment else (False,)):
                    r = bench.run(decode_cache=decode_cache, randaugment=randaugment, mix=mix,
                                  num_images=args.num_images, batch_size=args.batch_size)
                    print(f"decode_cache={decode_cache} randaugment={randaugment} mix={mix}: "
                          f"{r.images_per_second:,.0f} images/s", flush=True)
                    results.append(r)
        for workers in args.num_workers:
            r = bench.run_dataloader(num_workers=workers, num_images=max(args.num_images, 4 * args.batch_size))
            print(f"DataLoader workers={workers}: {r.images_per_second:,.0f} images/s total", flush=True)
            results.append(r)
    print()
    print(markdown_table(results))
    host = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__}
    print(f"\nhost: {host}")
    if args.output_json:
        record = {"host": host, "results": [r.as_dict() for r in results]}
        Path(args.output_json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
