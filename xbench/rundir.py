"""Run folders: made writable, locked and identified before a run does any work.

:func:`prepare` is called once per run, before the model loads (``Run.execute`` calls it
through ``Run._prepare_out_dir``):

1. a folder holding records is refused unless the run resumes;
2. the folder is created and **locked**: ``fcntl.flock`` on ``<out>/.xbench.lock``, held for
   the run's life. A second process gets a :class:`RunDirectoryError` at once naming the
   folder and the holder (the pid written in the lock file; that content is informative
   only: the kernel releases the lock when its process dies, so a lock left by a killed run
   is never stale and is simply taken). Creating the lock file is also the writability
   check: an unwritable folder fails here, before the model loads;
3. temporary files of a killed writer (``.summary.json.<pid>.tmp``...) are removed;
4. the run's **identity** (:func:`identity`: method and parameters, model id, config and
   weights hashes, dtype, task, split, task parameters, data hash, seed, metrics and their
   parameters, reference and its parameters and run, control, max_new_tokens, xbench
   version) is computed without loading the model and compared with ``<out>/run.json``
   when the folder holds records: every difference is named in one error. A folder with
   records but no ``run.json`` is refused (nothing ties its records to this run). A folder
   without records gets a fresh ``run.json``.

:class:`~xbench.records.RecordWriter` stamps the identity's hash on every record and
:func:`~xbench.records.iter_records` sets aside records stamped otherwise. ``limit``,
batch size, device, warm-up and progress are not part of the identity: a run may grow
or move between machines. flock works on local file systems and on NFS (Linux emulates
it with byte-range locks); on a file system without locks the lock call fails with a
clear error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import weakref
from pathlib import Path
from typing import Any, Iterator

from xbench import provenance
from xbench.errors import RunDirectoryError
from xbench.records import IDENTITY, IDENTITY_FORMAT, SAMPLES, SUMMARY, read_identity, to_jsonable, write_json_atomic

LOCK = ".xbench.lock"
_TEMPORARY = re.compile(rf"^\.({re.escape(SUMMARY)}|{re.escape(IDENTITY)})\.\d+\.tmp$")


class RunFolder:
    """A prepared run folder: where records go, and the lock held until :meth:`release`
    (or until this object is garbage-collected, or the process ends)."""

    def __init__(self, path: Path, identity: dict[str, Any], digest: str, fd: int) -> None:
        self.path, self.identity, self.hash = path, identity, digest
        self._close = weakref.finalize(self, os.close, fd)  # closing the descriptor releases the flock

    @property
    def records(self) -> Path:
        return self.path / SAMPLES

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        self._close()


def prepare(run) -> RunFolder:
    """Check, create, lock and identify ``run.out_dir`` (see the module docstring); the lock
    is held by the returned folder until it is released or garbage-collected."""
    out, cfg = Path(run.out_dir), run.config
    if has_records(out) and not cfg.resume:
        raise RunDirectoryError(f"{out} already holds records; pass --resume to continue it or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create the run directory {out}: {exc.strerror or exc}") from None
    fd = lock(out)
    try:
        remove_stale_temporaries(out)
        ident = identity(run)
        digest = identity_digest(ident)
        check_or_record(out, ident, digest)
    except BaseException:
        os.close(fd)
        raise
    return RunFolder(out, ident, digest, fd)


@contextlib.contextmanager
def held(run) -> Iterator[Any]:
    """``with held(Run(...)) as r: r.execute()``: the run folder's lock is released at the end."""
    try:
        yield run
    finally:
        folder = getattr(run, "run_folder", None)
        if folder is not None:
            folder.release()


def has_records(out: Path) -> bool:
    try:
        return (Path(out) / SAMPLES).stat().st_size > 0
    except OSError:
        return False


def lock(out: Path) -> int:
    """An exclusive flock on ``out/.xbench.lock`` (its descriptor); refused at once when held."""
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirectoryError(f"cannot write in the run directory {out}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirectoryError(
                f"{out} is in use by another xbench run ({holder}); one process writes a run folder at a time: "
                "wait for it to finish or choose another --out"
            ) from None
        raise RunDirectoryError(f"cannot lock the run directory {out}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()} since {provenance.now()}\n".encode())
    except OSError as exc:
        os.close(fd)
        raise RunDirectoryError(f"cannot write in the run directory {out}: {exc.strerror or exc}") from None
    return fd


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder unknown"


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files a killed writer left behind (only ever removed under the lock)."""
    for entry in out.iterdir():
        if _TEMPORARY.match(entry.name):
            entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------- identity


def identity(run) -> dict[str, Any]:
    """What a run's records depend on, as plain JSON values (field names read in messages)."""
    from xbench import __version__
    from xbench.models import (
        check_device, check_model_dir, config_hash, default_device, default_dtype, model_hash, resolve_model,
    )

    cfg, registries = run.config, run.plugins.registries
    model_id, model_dir = resolve_model(cfg.model, registries)
    if cfg.model not in registries.models:
        model_id = str(Path(model_id).resolve())
    model_config = check_model_dir(model_dir)
    dtype = cfg.dtype or default_dtype(check_device(cfg.device or default_device()))
    ref = run.reference.describe() if run.reference is not None else {}
    fields = {
        "method": run.method.name,
        "method params": run.method.params,
        "model": model_id,
        "model config hash": config_hash(model_config),
        "model weights hash": model_hash(model_dir),
        "dtype": dtype,
        "task": run.task.name,
        "split": run.task.split,
        "task params": run.task.params,
        "data hash": run.task.data_hash(),
        "seed": cfg.seed,
        "metrics": [m.name for m in run.metrics],
        "metric params": {m.name: m.params for m in run.metrics if m.params},
        "reference": ref["method"].split(" ", 1)[0] if ref else None,  # the name (the label adds params)
        "reference params": ref.get("params"),
        "reference run": None if ref.get("source") in (None, "same run") else str(Path(ref["source"]).resolve()),
        "control": cfg.control,
        "max_new_tokens": run.max_new_tokens,
        "xbench version": __version__,
    }
    return json.loads(json.dumps(to_jsonable(fields)))  # exactly what run.json will read back


def identity_digest(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def recorded_identity(out: Path) -> dict[str, Any] | None:
    """The identity in ``out/run.json``; None when absent; an unreadable one is an error naming it."""
    data = read_identity(out)
    return None if data is None else data["identity"]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"<field> <old>, this run asks for <new>"`` for every field that differs."""
    missing = "(not recorded)"
    keys = list(new) + [k for k in old if k not in new]
    return [
        f"{k} {old.get(k, missing)!r}, this run asks for {new.get(k, missing)!r}"
        for k in keys
        if old.get(k, missing) != new.get(k, missing)
    ]


def check_or_record(out: Path, ident: dict[str, Any], digest: str) -> None:
    """Refuse a folder whose records belong to another identity; else record this one."""
    if has_records(out):
        old = recorded_identity(out)
        if old is None:
            raise RunDirectoryError(
                f"--resume: {out} holds records but no {IDENTITY} (written before xbench recorded run identities, "
                "or removed), so nothing ties them to this run: choose another --out or move it away"
            )
        diffs = differences(old, ident)
        if diffs:
            raise RunDirectoryError(
                f"--resume: {out} was run with {'; '.join(diffs)} (its records would be mixed with this run's: "
                "choose another --out or move it away)"
            )
        return
    record = {"format": IDENTITY_FORMAT, "hash": digest, "identity": ident, "created": provenance.now()}
    write_json_atomic(out / IDENTITY, record)
