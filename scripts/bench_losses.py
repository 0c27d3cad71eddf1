"""Benchmark the SIGReg losses: sigreg_hf against the seed's formulas and the maintained peers.

Times forward+backward (median of repeats, all implementations side by side in one process) and
measures each implementation's peak extra memory for one forward+backward:
- CPU: in a fresh subprocess per (implementation, shape), as the rise of the peak resident set
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) with glibc's mmap threshold pinned
  so that freed buffers go back to the OS;
- CUDA: ``torch.cuda.max_memory_allocated`` above the baseline, timed with CUDA events.

The same projection matrix is injected into every strong implementation (lightly's
``SIGReg(knots=9, t_max=5.0)`` and jepa-science's ``sigreg_loss(n_knots=9, t_max=5.0)`` give the seed's
17-point [-5, 5] value), and the values are checked to agree before anything is timed.

    python scripts/bench_losses.py                 # full table (CPU)
    python scripts/bench_losses.py --quick         # small shapes, few repeats
    python scripts/bench_losses.py --device cuda   # GPU table
Peers come from the ``bench`` extra: ``pip install --no-deps lightly jepa-science``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from machine_info import cpu_model  # scripts/ is on the path of a script run from it

from sigreg_hf import draw_projection, draw_sketch, sigreg_strong, sigreg_weak
from sigreg_hf.reference import seed_sigreg_strong, seed_sigreg_weak

SHAPES = [(256, 512), (8320, 192), (16640, 384), (33280, 768)]
QUICK_SHAPES = [(256, 512), (2048, 192)]
NUM_SLICES = 64
SKETCH_DIM = 64

LossFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# implementations under test
# ----------------------------------------------------------------------------------------------
def strong_implementations(projection: torch.Tensor) -> dict[str, LossFn]:
    impls: dict[str, LossFn] = {
        "sigreg_hf": lambda x: sigreg_strong(x, projection=projection, num_slices=NUM_SLICES, distributed=False),
        "seed": lambda x: seed_sigreg_strong(x, projection),
    }
    try:
        from lightly.loss.lejepa_loss import SIGReg

        lightly_loss = SIGReg(knots=9, t_max=5.0, num_vectors=NUM_SLICES).to(projection.device)
        lightly_loss._generate_unit_vectors = lambda device, dtype, num_features: projection
        impls["lightly"] = lightly_loss
    except ImportError:
        pass
    try:
        import jepa_science.sigreg as jepa_sigreg

        jepa_sigreg._sample_directions = lambda *args, **kwargs: projection
        impls["jepa-science"] = lambda x: jepa_sigreg.sigreg_loss(x, num_slices=NUM_SLICES, n_knots=9, t_max=5.0)
    except ImportError:
        pass
    return impls


def weak_implementations(sketch: torch.Tensor) -> dict[str, LossFn]:
    return {
        "sigreg_hf": lambda x: sigreg_weak(x, sketch=sketch, distributed=False),
        "seed": lambda x: seed_sigreg_weak(x, sketch),
    }


def floor_implementation(projection: torch.Tensor) -> LossFn:
    """The strong statistic's floor: the ``x @ A`` product, forward and backward, nothing else."""
    return lambda x: (x @ projection).sum()


def make_inputs(n: int, c: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, c, generator=g) * 1.2 + 0.1).to(device)
    projection = draw_projection(c, NUM_SLICES, generator=g).to(device)
    sketch = draw_sketch(SKETCH_DIM, c, generator=g).to(device)
    return x, projection, sketch


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def _one_fwd_bwd(fn: LossFn, x: torch.Tensor) -> float:
    leaf = x.detach().clone().requires_grad_(True)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(leaf).backward()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn(leaf).backward()
    return time.perf_counter() - t0


def time_fwd_bwd(fns: dict[str, LossFn], x: torch.Tensor, repeats: int, slow: tuple[str, ...] = ()) -> dict[str, float]:
    """Median seconds of one forward+backward w.r.t. x, for each implementation.

    Implementations are interleaved round by round, in an order that rotates every round (after one
    warm-up call each), so background load and allocator state hit all of them alike. Names in ``slow``
    run in every third round only.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        _one_fwd_bwd(fn, x)
    names = list(fns)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            if name in slow and round_index % 3 and len(samples[name]) >= 2:
                continue
            samples[name].append(_one_fwd_bwd(fn, x))
    return {name: statistics.median(values) for name, values in samples.items()}


def repeats_for(n: int, c: int, quick: bool) -> int:
    if quick:
        return 3
    return 21 if n * c <= 2_000_000 else 11


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------
def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_here(loss: str, impl: str, n: int, c: int, device: str) -> int:
    """Peak extra bytes of one forward+backward (run in a fresh process for CPU)."""
    x, projection, sketch = make_inputs(n, c, device)
    impls = strong_implementations(projection) if loss == "strong" else weak_implementations(sketch)
    if impl == "floor":
        fn = floor_implementation(projection)
    else:
        fn = impls[impl]
    leaf = x.detach().clone().requires_grad_(True)
    if device == "cuda":
        fn(leaf).backward()  # warm-up (cuBLAS workspaces)
        leaf.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(leaf).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    fn(leaf).backward()  # warm-up: lazily initialised state is not counted
    leaf.grad = None
    before = _read_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    fn(leaf).backward()
    return (_read_status_kib("VmHWM") - before) * 1024


def measure_peak(loss: str, impl: str, n: int, c: int, device: str) -> int:
    if device == "cuda":
        return measure_peak_here(loss, impl, n, c, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--_measure", json.dumps([loss, impl, n, c, device])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def machine_description(device: str) -> str:
    cpu = cpu_model()
    lines = [
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
        f"python {platform.python_version()}, torch {torch.__version__}",
    ]
    if device == "cuda":
        lines.append(f"gpu: {torch.cuda.get_device_name()}")
    for package in ("lightly", "jepa_science"):
        try:
            module = __import__(package)
            lines.append(f"{package} {getattr(module, '__version__', '?')}")
        except ImportError:
            lines.append(f"{package}: not installed (pip install --no-deps lightly jepa-science)")
    return "\n".join(lines)


def check_agreement(impls: dict[str, LossFn], x: torch.Tensor) -> dict[str, float]:
    values = {name: float(fn(x.detach())) for name, fn in impls.items()}
    reference = values["seed"]
    for name, value in values.items():
        if abs(value - reference) > 1e-4 * abs(reference):
            raise SystemExit(f"{name} disagrees with the seed formula: {value} vs {reference}")
    return values


def run(
    device: str, quick: bool, memory: bool, shapes: list[tuple[int, int]], losses: tuple[str, ...] = ("strong", "weak")
) -> str:
    out = [machine_description(device), ""]
    for loss in losses:
        out.append(f"### {loss} SIGReg, forward+backward ({device})")
        out.append("")
        header = "| [N, C] | impl | value | median ms | x sigreg_hf time | peak MiB |"
        if loss == "strong":
            header += " ours / floor (time) |"
        out += [header, "|" + "---|" * (header.count("|") - 1)]
        for n, c in shapes:
            first_row = len(out)
            x, projection, sketch = make_inputs(n, c, device)
            impls = strong_implementations(projection) if loss == "strong" else weak_implementations(sketch)
            values = check_agreement(impls, x)
            reps = repeats_for(n, c, quick)
            timed = dict(impls)
            if loss == "strong":
                timed["floor"] = floor_implementation(projection)
            times = time_fwd_bwd(timed, x, reps, slow=("seed",))
            floor = times.get("floor")
            for name in impls:
                peak = measure_peak(loss, name, n, c, device) / 2**20 if memory else float("nan")
                row = (
                    f"| [{n}, {c}] | {name} | {values[name]:.4f} | {times[name] * 1e3:.2f} | "
                    f"{times[name] / times['sigreg_hf']:.2f} | {peak:.1f} |"
                )
                if loss == "strong":
                    row += f" {times['sigreg_hf'] / floor:.2f} |" if name == "sigreg_hf" else " |"
                out.append(row)
            if loss == "strong":
                peers = [p for p in ("lightly", "jepa-science") if p in times]
                if peers:
                    fastest = min(peers, key=times.get)
                    out.append(
                        f"| [{n}, {c}] | **sigreg_hf vs fastest peer ({fastest})** | | "
                        f"**{times[fastest] / times['sigreg_hf']:.2f}x faster** | | |"
                        f" floor {floor * 1e3:.2f} ms |"
                    )
            print("\n".join(out[first_row:]), flush=True)
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--shapes", nargs="+", metavar="NxC", help="shapes instead of the default set, e.g. 8320x192")
    parser.add_argument("--losses", nargs="+", default=["strong", "weak"], choices=["strong", "weak"])
    parser.add_argument("--output", help="also write the Markdown report to this file")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        loss, impl, n, c, device = json.loads(args._measure)
        print(measure_peak_here(loss, impl, n, c, device))
        return
    if args.shapes:
        shapes = [tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes]
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    report = run(args.device, args.quick, not args.no_memory, shapes, tuple(args.losses))
    print("\n" + report)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
