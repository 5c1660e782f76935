"""Cost measurement: wall time (synchronised on CUDA), peak GPU memory, peak RSS.

Peak GPU memory is ``None`` without CUDA (a CPU build reports 0, which would read as
"free"). Peak RSS is the kernel's high-water mark for this process (``VmHWM`` in
/proc/self/status; ``ru_maxrss`` elsewhere), which no sampling can miss; it covers the
whole process, model loading included. ``VmHWM`` starts afresh at exec, whereas Linux
carries ``ru_maxrss`` over from the parent that forked the process.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


def cuda_active(device) -> bool:
    import torch

    return torch.cuda.is_available() and str(device).startswith("cuda")


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_gpu_bytes: int | None = None


@contextmanager
def measure(device):
    """Time the block; on CUDA synchronise around it and record its peak allocated memory."""
    import torch

    m = Measurement()
    on_gpu = cuda_active(device)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield m
    finally:
        if on_gpu:
            torch.cuda.synchronize()
            m.peak_gpu_bytes = int(torch.cuda.max_memory_allocated())
        m.seconds = time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / mean of a list (None when empty)."""
    if not values:
        return {"p50": None, "p95": None, "mean": None}
    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean())}
