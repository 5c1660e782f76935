"""Cost measurement: wall time, peak GPU memory and peak resident memory, per phase.

What each cost column of a run measures:

* ``generate_ms`` / ``explain_ms`` (per sample): wall time of the batch's ``vlm.generate``
  call (resp. ``method.explain``) divided by the batch's size; on CUDA the device is
  synchronised before and after, so queued kernels are counted. Warm-up batches are not timed.
* ``generate_peak_gpu_mib`` / ``explain_peak_gpu_mib`` (per sample): peak GPU memory allocated
  by torch during that call (``torch.cuda.max_memory_allocated`` after a reset), model weights
  included; ``None`` without CUDA (a CPU build reports 0, which would read as "free").
* ``generate_rss_peak_mib`` / ``explain_rss_peak_mib`` (per sample): how far this process's
  resident memory rose above its level at the start of that call, at its highest during the
  call, in MiB: sampled every :data:`RSS_INTERVAL_S` seconds with memory-profiler on a
  background thread, plus at start and end. It is the memory the phase itself took from the
  machine (on CPU: activations, gradients, perturbed copies), not the model already loaded;
  memory the allocator keeps from an earlier batch and reuses is not counted again, so the first
  batches of a run carry most of it and the summary reports its maximum beside its median.
  Every sample of a batch gets its batch's value.
* ``peak_rss_mib`` (summary): the kernel's high-water mark of the whole process (``VmHWM`` in
  /proc/self/status; ``ru_maxrss`` elsewhere), model loading included; no sampling can miss it.
* ``timings`` (summary, seconds): wall time of the run and what it spent loading the model,
  warming up, generating, explaining, making reference and control maps and computing metrics;
  ``harness_s`` is the rest (data reading, records, bootstrap, summary): the harness's own time.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

RSS_INTERVAL_S = 0.005  # sampling period of the resident-memory watch (a read costs ~0.1-0.3 ms)


def cuda_active(device) -> bool:
    import torch

    return torch.cuda.is_available() and str(device).startswith("cuda")


@dataclass
class Measurement:
    """What one measured call cost: seconds, peak GPU bytes (None off-GPU) and the rise of
    resident memory above its start in MiB (None when not measured)."""

    seconds: float = 0.0
    peak_gpu_bytes: int | None = None
    rss_peak_mib: float | None = None

    def per_item(self, n: int) -> "Measurement":
        """The share of one of ``n`` items processed together: seconds divided, peaks kept."""
        return replace(self, seconds=self.seconds / n)


def rss_mib() -> float:
    """This process's resident set size now, in MiB, as memory-profiler reads it."""
    from memory_profiler import memory_usage

    return float(memory_usage(-1, interval=0, max_iterations=1)[0])


class RssWindow:
    """One measured span's resident memory: the level at its start and the highest seen since."""

    def __init__(self, start: float) -> None:
        self.start = self.peak = start

    @property
    def increase(self) -> float:
        """MiB above the level at the start (0 when it never rose)."""
        return max(self.peak - self.start, 0.0)


class RssWatch:
    """Samples this process's resident memory every ``interval`` seconds on one daemon thread,
    raising the peak of every open :class:`RssWindow`; a window also reads it when it opens and
    closes. One watch serves the whole process (:func:`rss_watch`), so a measured call costs two
    reads, not a thread."""

    def __init__(self, interval: float = RSS_INTERVAL_S) -> None:
        self.interval = interval
        self._open: set[RssWindow] = set()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                windows = list(self._open)
            if windows:
                now = rss_mib()
                for w in windows:
                    w.peak = max(w.peak, now)

    @contextmanager
    def window(self) -> Iterator[RssWindow]:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (threads do not survive fork)
                self._pid, self._open = os.getpid(), set()
                threading.Thread(target=self._watch, name="xbench-rss-watch", daemon=True).start()
        w = RssWindow(rss_mib())
        with self._lock:
            self._open.add(w)
        try:
            yield w
        finally:
            with self._lock:
                self._open.discard(w)
            w.peak = max(w.peak, rss_mib())


_WATCH = RssWatch()


def rss_watch() -> RssWatch:
    """The process's resident-memory watch."""
    return _WATCH


@contextmanager
def measure(device) -> Iterator[Measurement]:
    """Time the block, watch its resident memory; on CUDA synchronise around it and record its
    peak allocated memory. The yielded :class:`Measurement` is filled in when the block ends.
    Opening and closing the memory window (a read each) is outside the timed span."""
    import torch

    m = Measurement()
    on_gpu = cuda_active(device)
    with rss_watch().window() as watch:
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
    m.rss_peak_mib = watch.increase


class PhaseTimes:
    """Seconds spent per named phase of a run (summed over calls)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)


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
