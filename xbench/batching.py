"""Batches and retry-on-halves: the run loop's defence against one bad sample (or CUDA
out-of-memory) spoiling a whole batch."""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator

from xbench import cost
from xbench.errors import XbenchError


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def call_splitting(fn: Callable[[list], list], items: list, device) -> Iterator[tuple]:
    """``fn(items)`` measured (:func:`xbench.cost.measure`); on failure retried on halves down
    to single items.

    Yields ``(item, result | Exception, measurement)`` per item, where ``measurement`` is the
    :class:`~xbench.cost.Measurement` of the call that produced the result with its seconds
    shared equally among that call's items (peaks are the call's). An exception is yielded
    only for a single item that failed on its own. After an out-of-memory error the CUDA
    cache is emptied before the halves are tried.
    """
    if not items:  # every sample of the batch failed earlier (e.g. unreadable images)
        return
    try:
        with cost.measure(device) as m:
            results = fn(items)
        if len(results) != len(items):
            raise XbenchError(f"returned {len(results)} results for {len(items)} inputs")
    except Exception as exc:
        if len(items) == 1:
            yield items[0], exc, cost.Measurement()
            return
        if _is_oom(exc):
            _free_cuda()
        half = len(items) // 2
        yield from call_splitting(fn, items[:half], device)
        yield from call_splitting(fn, items[half:], device)
        return
    share = m.per_item(len(items))
    for item, result in zip(items, results):
        yield item, result, share


def _is_oom(exc: Exception) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(exc: BaseException) -> str:
    """An exception as one line for a record: our own errors by their message, others with their type."""
    return str(exc) if isinstance(exc, XbenchError) else f"{type(exc).__name__}: {exc}"
