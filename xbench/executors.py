"""Sweep executors: where a sweep's cells run (see :mod:`xbench.sweep`).

``local`` runs cells one after another in this process; ``ray`` runs them as Ray tasks
(one GPU each when the cluster has GPUs). A ``host:port`` (or ``ray://host:port``) Ray
address is probed with a TCP connect first, so an unreachable one fails within
:data:`PROBE_TIMEOUT_S` seconds naming it instead of waiting on Ray's own retries.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from xbench.api import Parameterised
from xbench.errors import XbenchError
from xbench.params import Param
from xbench.registry import Registry

if TYPE_CHECKING:
    from xbench.suite import Cell

PROBE_TIMEOUT_S = 10.0  # a Ray address that does not answer a TCP connect by then is unreachable


class ExecutorError(XbenchError):
    """An executor that cannot start (Ray missing, cluster unreachable...)."""


class Executor(Parameterised):
    """Runs cells and calls ``report(result)`` as each one ends (in any order).

    Subclasses set ``name`` and implement :meth:`run`; constructor keywords are the
    executor's options, declared in :attr:`parameters` (``address`` for Ray).
    """

    kind = "executor"
    description: ClassVar[str] = ""

    def run(self, cells: Sequence[Cell], report: Callable[[dict], None], plugins=None) -> None:
        raise NotImplementedError


class LocalExecutor(Executor):
    name = "local"
    description = "one cell after another in this process"

    def run(self, cells, report, plugins=None):
        from xbench.sweep import run_cell

        for cell in cells:
            report(run_cell(cell, plugins))


class RayExecutor(Executor):
    """Each cell a Ray task: one GPU when the cluster has GPUs, else one CPU.

    Connects to ``address`` (``auto``, ``ray://host:10001``...) or starts a local Ray
    instance, unless Ray is already initialised in this process; shuts down only what it
    started. Workers use the installed plugins (entry points), not in-process extras.
    """

    name = "ray"
    description = "cells as Ray tasks (pip install 'xbench[ray]')"
    parameters = {"address": Param(None, type=str, doc="the cluster to reach (auto, ray://host:10001...); default: start one")}

    @property
    def address(self) -> str | None:
        return self.params["address"]

    def run(self, cells, report, plugins=None):
        from xbench.sweep import record_failure, run_cell

        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            probe(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... by case
                where = f"Ray at {self.address!r}" if self.address else "a local Ray instance"
                raise ExecutorError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from None
        try:
            remote = ray.remote(run_cell).options(**self.resources(ray))
            pending = {remote.remote(cell): cell for cell in cells}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the worker died (killed, out of host memory...)
                        result = record_failure(cell, exc)
                    report(result)
        finally:
            if started:
                ray.shutdown()

    @staticmethod
    def resources(ray) -> dict:
        """What each cell asks for: one GPU when the cluster has any, else one CPU."""
        return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def probe(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A TCP connect to a ``host:port`` or ``ray://host:port`` address; :class:`ExecutorError`
    naming it when nothing answers within ``timeout`` seconds (``auto``, ``local`` and no
    address are left to Ray: they do not name a port)."""
    if not address:
        return
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if match is None:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ExecutorError(f"cannot reach Ray at {address!r}: {reason} (within {timeout:g} s)") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("the ray executor needs Ray: pip install 'xbench[ray]' (or 'ray>=2.40')") from None
    return ray


EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.origin = "xbench.executors"
for _cls in (LocalExecutor, RayExecutor):
    EXECUTORS.register(_cls)


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor ``name`` built with the options given (``address`` only when set)."""
    return EXECUTORS.get(name)(**({} if address is None else {"address": address}))
