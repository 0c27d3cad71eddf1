"""Keep a training process's freed host memory for reuse instead of handing it back every step (glibc).

A training step frees and re-allocates the same large buffers (activations, gradients, optimiser temporaries)
every step. glibc returns chunks above its *dynamic* mmap threshold, and a large free top of the heap, to the
operating system, so the next step pays the page faults of getting them back. Which buffers are affected depends
on the order of frees, so two loops doing the same arithmetic can differ: on this project's CPU machine the app's
training path ran at 0.89-0.98x a plain loop's images/s until the thresholds were fixed, then at 1.01-1.07x
(``scripts/bench_train.py``, docs/benchmarks.md). :func:`retain_freed_memory` fixes them with ``mallopt``: the
mmap threshold at glibc's maximum (32 MiB on 64-bit) and the trim threshold at 1 GiB. Results do not change;
the process may keep up to that much freed memory mapped (its peak is unchanged). Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory(*, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (and processes it forks later).

    Returns:
        True when both were set; False where the C library is not glibc or refused a value (nothing changed
        then, or only the accepted one).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    accepted = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    accepted = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and accepted
    if not accepted:
        logger.warning("glibc refused the malloc thresholds (mmap %d, trim %d); left as they were.",
                       mmap_threshold, trim_threshold)
    return accepted
