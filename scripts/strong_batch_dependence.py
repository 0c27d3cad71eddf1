"""How strong SIGReg's value depends on the number of samples N, for both normalisations (README table).

The seed's statistic ("seed") is N times the Epps-Pulley integral; "per_sample" is the integral alone. Printed:
the mean over draws of the statistic on N(0, I) data and on 2 x N(0, I) (a non-Gaussian target), C = 64
features, 64 slices, for N = 64, 128, 512::

    python scripts/strong_batch_dependence.py
"""

from __future__ import annotations

import argparse

import torch

from sigreg_hf import sigreg_strong


def mean_statistic(n: int, scale: float, normalization: str, *, features: int, draws: int) -> float:
    values = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(draw)
        x = scale * torch.randn(n, features, generator=generator)
        values.append(float(sigreg_strong(x, num_slices=64, generator=generator, normalization=normalization)))
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 512])
    ns = parser.parse_args()
    print(f"| data | N | `\"seed\"` | `\"per_sample\"` |  (C = {ns.features}, 64 slices, mean of {ns.draws} draws)")
    print("|---|---:|---:|---:|")
    for label, scale in (("N(0, I)", 1.0), ("2 x N(0, I) (non-Gaussian target)", 2.0)):
        seed = [mean_statistic(n, scale, "seed", features=ns.features, draws=ns.draws) for n in ns.sizes]
        per = [mean_statistic(n, scale, "per_sample", features=ns.features, draws=ns.draws) for n in ns.sizes]
        print(f"| {label} | {' / '.join(map(str, ns.sizes))} | {' / '.join(f'{v:.3g}' for v in seed)} | "
              f"{' / '.join(f'{v:.3g}' for v in per)} |")  # fmt: skip


if __name__ == "__main__":
    main()
