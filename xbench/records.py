"""Run records on disk: ``samples.jsonl`` (one line per sample) and ``summary.json``.

Each record is one ``write`` of a complete line, in the kernel before the next sample
starts. Reading is strict (:func:`iter_records`): a line cut short by a crash (the last
one, without its newline) is dropped, and truncated away on resume; any other line that
is not a well-formed record (not JSON, not an object, no string ``id``, a known field of
the wrong type, a non-finite number, an id seen on an earlier line, a record stamped by
another run) is reported on stderr with its line number and *set aside*: readers skip
it, so a resumed run explains that sample again and a summary counts it nowhere.
``summary.json`` is replaced atomically. Write errors (disk full, permission denied,
a value JSON cannot hold) are one :class:`~xbench.errors.RunDirectoryError` naming the
file, and leave no temporary file behind.

A run folder's identity (``run.json``, written by :mod:`xbench.rundir`) has a short hash;
:class:`RecordWriter` stamps it on every record as ``run_identity``, and when a folder has
a ``run.json`` readers set aside records stamped with another hash or with none.

The typed schema of both (:class:`Record`, :class:`ErrorRecord`, :class:`Summary`,
:class:`MetricEntry`, :class:`Timings`) is what the run loop writes and what tests and the
leaderboard read; on disk they are plain JSON objects with these keys.
"""

import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NotRequired, TypedDict

from xbench.api import Pooled
from xbench.errors import RunDirectoryError

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
IDENTITY = "run.json"  # a run folder's identity (see xbench.rundir)
IDENTITY_FORMAT = "xbench-run-identity"  # its "format" field
STAMP = "run_identity"  # the record key holding the identity hash of the run that wrote it
#: types of the record fields a reader relies on (a field may be absent; ``None`` only where listed)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "error": (str,),
    "stage": (str, type(None)),
    "answer": (str,),
    "scores": (dict,),
    "metrics": (dict,),
    "extras": (dict,),
    "meta": (dict,),
    "grid": (list,),
    "layout": (dict,),
    "map": (list, type(None)),
    "map_file": (str,),
    "generate_ms": (int, float),
    "explain_ms": (int, float),
    STAMP: (str,),
}
MAX_WARNINGS = 5  # set-aside lines reported per file; the rest are counted
_warned: set[tuple[str, int, str]] = set()  # (file, line, reason) already reported in this process


class Record(TypedDict):
    """One explained sample (a line of ``samples.jsonl``). Costs: see :mod:`xbench.cost`."""

    id: str
    question: str
    gold: list[str]
    answer: str
    answer_ids: list[int]
    prompt_len: int
    meta: dict[str, Any]  # the sample's meta; also ``metric_errors`` {column: message}, ``mask_error``
    scores: dict[str, float]  # the task's answer scores
    metrics: dict[str, float | None]  # column (xbench.columns) -> value; None where it did not apply
    extras: dict[str, float]  # scalars the method returned (e.g. a confidence)
    generate_ms: float
    explain_ms: float
    generate_peak_gpu_mib: float | None
    explain_peak_gpu_mib: float | None
    generate_rss_peak_mib: float | None
    explain_rss_peak_mib: float | None
    grid: list[int]  # [h, w]
    map: NotRequired[list[list[float]]]  # inline when h * w <= 1024 ...
    map_file: NotRequired[str]  # ... else maps/<id>.npy, relative to the run folder
    control_map: NotRequired[list[list[float]]]  # with --control, small grids only
    control_error: NotRequired[str]  # with --control, when the control map failed
    counts: NotRequired[dict[str, dict[str, float]]]  # per pooled metric column: the counts its run value pools
    run_identity: NotRequired[str]  # the folder's identity hash (run.json), added by RecordWriter


#: The keys of a :class:`Record` that measure the machine rather than the method (they differ run to run).
COST_FIELDS = frozenset({"generate_ms", "explain_ms", "generate_peak_gpu_mib", "explain_peak_gpu_mib",
                         "generate_rss_peak_mib", "explain_rss_peak_mib"})  # fmt: skip


class ErrorRecord(TypedDict):
    """A sample that failed: the error and the stage (data, image, generate, explain, score)."""

    id: str
    error: str
    stage: str
    meta: dict[str, Any]
    run_identity: NotRequired[str]  # the folder's identity hash (run.json), added by RecordWriter


class MetricEntry(TypedDict):
    """One column of a summary: the run's value, the samples it covers, its interval."""

    value: float | None
    n: int
    category: str  # answer | agreement | faithfulness | localisation | confidence | sanity | cost
    higher_is_better: bool | None  # None: no direction (a control column, a random baseline)
    ci95: list[float] | None  # [lo, hi] percentile bootstrap over samples
    control_of: NotRequired[str]  # on ``name@control`` columns: ``name``
    flag_above: NotRequired[float]  # values above it are flagged (Metric.flag_above)


class Timings(TypedDict):
    """Seconds of this invocation of the run (see :mod:`xbench.cost`)."""

    wall_s: float
    model_load_s: float
    warmup_s: float
    generate_s: float
    explain_s: float
    companions_s: float  # reference and control maps
    metrics_s: float
    harness_s: float  # wall minus the phases above
    harness_share_after_load: float | None  # harness_s / (wall_s - model_load_s)


class Summary(TypedDict):
    """``summary.json``."""

    run_id: str
    method: dict[str, Any]  # name, label, params
    task: dict[str, Any]  # name, split, params, data_hash
    model: dict[str, Any]  # id, config_hash, model_hash, dtype, attn_implementation, family, prompt_format
    n_records: int
    n_ok: int
    n_errors: int
    errors_by_stage: dict[str, int]
    error_digest: dict[str, Any] | None  # first error and the most common one (see summary.error_digest)
    metrics: dict[str, MetricEntry]
    bootstrap: dict[str, Any]  # resamples, level, method, seed
    metric_params: dict[str, dict[str, Any]]
    reference: dict[str, Any] | None
    control: dict[str, Any] | None
    config: dict[str, Any]
    provenance: dict[str, Any]
    timings: NotRequired[Timings]


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and paths to plain JSON types."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """Complete records of a ``samples.jsonl`` (see :func:`iter_records`)."""
    return list(iter_records(path, repair))


def read_identity(folder: Path) -> dict | None:
    """The content of ``folder/run.json`` (``format``, ``hash``, ``identity``...); None when
    absent; one that cannot be read or is not an xbench run identity is a
    :class:`RunDirectoryError` naming it."""
    path = Path(folder) / IDENTITY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"cannot read the run identity {path}: {exc}") from None
    if not (isinstance(data, dict) and data.get("format") == IDENTITY_FORMAT and isinstance(data.get("hash"), str)
            and isinstance(data.get("identity"), dict)):
        raise RunDirectoryError(f"{path} is not an xbench run identity; move it away")
    return data


def identity_hash(folder: Path) -> str | None:
    """The identity hash recorded in ``folder/run.json`` (None when the folder has none)."""
    data = read_identity(folder)
    return None if data is None else data["hash"]


def iter_records(path: Path, repair: bool = False, report: Callable[[int, str], None] | None = None) -> Iterator[dict]:
    """Stream the well-formed records of a ``samples.jsonl``, one line in memory at a time.

    A torn last line (no newline: a crash during its ``write``) is skipped, and with
    ``repair`` truncated away once the file has been read to its end. Every other bad line
    is set aside (see the module docstring) and ``report(line_number, reason)`` is called;
    the default prints ``xbench: warning: <file> line <n>: <reason>`` on stderr (each line
    once per process, at most :data:`MAX_WARNINGS` per file, then a count).
    """
    if not path.exists():
        return
    if not path.is_file():  # a device or pipe could be endless (/dev/zero) or block for ever
        raise RunDirectoryError(f"{path} is not a regular file")
    report = report or _Warner(path)
    stamp = identity_hash(path.parent)
    seen: set[str] = set()
    good_end, torn = 0, False
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):  # only the last line can lack its newline
                torn = True
                break
            good_end += len(line)
            record, reason = parse_record(line, stamp)
            if reason is None and record["id"] in seen:
                reason = f"id {record['id']!r} was recorded on an earlier line"
            if reason is not None:
                report(number, reason)
                continue
            seen.add(record["id"])
            yield record
    if isinstance(report, _Warner):
        report.finish()
    if repair and torn:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)


def parse_record(line: bytes, stamp: str | None = None) -> tuple[dict | None, str | None]:
    """``(record, None)`` for a well-formed record line, else ``(None, why it is not)``.

    ``stamp``: the folder's identity hash; a record stamped otherwise (or not at all) is refused."""
    try:
        record = json.loads(line, parse_constant=_refuse_constant)
    except ValueError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not a record object"
    if not isinstance(record.get("id"), str):
        return None, "no 'id'" if "id" not in record else f"'id' is {record['id']!r}, not a string"
    for key, types in FIELD_TYPES.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return None, f"field {key!r} is {_json_type(record[key])}, expected {expected}"
    if stamp is not None and record.get(STAMP) != stamp:
        theirs = record.get(STAMP)
        where = f"run identity {theirs}" if theirs else "no run identity"
        return None, f"record of id {record['id']!r} carries {where}, this folder's run.json has {stamp}"
    return record, None


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class _Warner:
    """The default ``report`` of :func:`iter_records`: one stderr line per set-aside line."""

    def __init__(self, path: Path) -> None:
        self.path, self.n = path, 0

    def __call__(self, number: int, reason: str) -> None:
        key = (str(self.path), number, reason)
        if key in _warned:
            return
        _warned.add(key)
        self.n += 1
        if self.n <= MAX_WARNINGS:
            print(f"xbench: warning: {self.path} line {number}: {reason}; set aside (a resumed run explains "
                  "that sample again)", file=sys.stderr)

    def finish(self) -> None:
        if self.n > MAX_WARNINGS:
            print(f"xbench: warning: {self.path}: {self.n - MAX_WARNINGS} more lines set aside", file=sys.stderr)


class RecordWriter:
    """Appends records to ``samples.jsonl``, one complete line per ``write``.

    Each line reaches the kernel before ``append`` returns, so a killed process loses
    nothing it recorded; ``fsync`` (which survives an OS crash too) runs at most once per
    ``sync_interval`` seconds and at close, since it costs milliseconds per call. Records
    are stamped with the folder's identity hash (``run.json``) when it has one. A failed
    write (disk full...) is cut back to the end of the last whole line and raised as
    :class:`RunDirectoryError` naming the file.
    """

    def __init__(self, path: Path, sync_interval: float = 1.0) -> None:
        self.path = path
        self.sync_interval = sync_interval
        self.stamp = identity_hash(path.parent)
        self._last_sync = time.monotonic()
        with _naming(path, "open"):
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        if self.stamp is not None:
            record = {**record, STAMP: self.stamp}
        line = memoryview((dumps_finite(record, self.path) + "\n").encode())
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            with _naming(self.path, "write a record to"):
                while line:  # write() may write less than asked (signals, nearly full disks)
                    line = line[os.write(self._fd, line) :]
                if time.monotonic() - self._last_sync >= self.sync_interval:
                    self._sync()
        except RunDirectoryError:
            try:
                os.ftruncate(self._fd, start)  # no torn line left for the next reader
            except OSError:
                pass
            raise

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        self._last_sync = time.monotonic()

    def close(self, quiet: bool = False) -> None:
        """fsync and close; ``quiet``: a failing fsync is ignored (an error is already on its way)."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if not quiet and exc.errno != errno.EINVAL:  # EINVAL: a file that cannot be synced (a device)
                raise RunDirectoryError(f"cannot write a record to {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(self._fd)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(quiet=exc is not None)


class _naming:
    """Turns an :class:`OSError` inside the block into one :class:`RunDirectoryError` naming ``path``."""

    def __init__(self, path: Path, action: str) -> None:
        self.path, self.action = path, action

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError):
            raise RunDirectoryError(f"cannot {self.action} {self.path}: {exc.strerror or exc}") from None
        return False


def dumps_finite(obj: Any, path: Path, **kwargs) -> str:
    """``json.dumps`` of :func:`to_jsonable` ``(obj)``; a non-finite number is a
    :class:`RunDirectoryError` naming ``path`` and the key holding it (JSON cannot hold it)."""
    obj = to_jsonable(obj)
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        where = _non_finite_key(obj) or "?"
        raise RunDirectoryError(f"cannot write {path}: {where} is not a finite number (JSON cannot hold it)") from None


def _non_finite_key(obj: Any, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'the value'} = {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _non_finite_key(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` by the JSON of ``obj`` atomically (a temporary file, fsync, rename).

    Any failure removes the temporary file; an :class:`OSError` or a non-finite number is a
    :class:`RunDirectoryError` naming ``path``."""
    path = Path(path)
    text = dumps_finite(obj, path, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _naming(path, "write"):
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def method_label(summary: dict) -> str:
    """The method's name plus its non-default parameters, as the run's summary recorded it."""
    return summary["method"].get("label") or summary["method"]["name"]


def load_map(run_dir: Path, record: dict):
    """A record's map as a numpy array: inline (``map``) or its ``maps/*.npy`` sidecar
    (``map_file``). Raises OSError, ValueError or KeyError when it cannot be read."""
    import numpy as np

    if record.get("map") is not None:
        return np.asarray(record["map"], dtype=np.float32)
    return np.load(Path(run_dir) / record["map_file"], allow_pickle=False)


def iter_summaries(root: Path) -> Iterator[tuple[Path, dict]]:
    """Every ``summary.json`` under ``root`` (or ``root`` itself if it is one)."""
    paths = [root] if root.is_file() else sorted(root.rglob(SUMMARY))
    for p in paths:
        try:
            yield p, json.loads(p.read_text())
        except (OSError, ValueError):
            continue


def split_pooled(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """``(values, counts)``: each :class:`Pooled` value replaced by its ``value``, its counts by column."""
    plain = {k: v.value if isinstance(v, Pooled) else v for k, v in values.items()}
    return plain, {k: dict(v.counts) for k, v in values.items() if isinstance(v, Pooled)}


def recorded_value(record: Mapping[str, Any], column: str) -> Any:
    """A record's value of metric ``column``: a :class:`Pooled` where the record kept its counts."""
    value, counts = record.get("metrics", {}).get(column), record.get("counts", {}).get(column)
    return value if counts is None else Pooled(value, counts)
