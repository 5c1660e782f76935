"""Run records on disk: ``samples.jsonl`` (one line per sample) and ``summary.json``.

Each record is one ``write`` of a complete line, in the kernel before the next
sample starts; a line cut short by a crash is dropped (and truncated away) on resume.
``summary.json`` is replaced atomically.

The typed schema of both (:class:`Record`, :class:`ErrorRecord`, :class:`Summary`,
:class:`MetricEntry`, :class:`Timings`) is what the run loop writes and what tests and the
leaderboard read; on disk they are plain JSON objects with these keys.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, NotRequired, TypedDict

from xbench.api import Pooled
from xbench.errors import RunDirectoryError

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


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


#: The keys of a :class:`Record` that measure the machine rather than the method (they differ run to run).
COST_FIELDS = frozenset({"generate_ms", "explain_ms", "generate_peak_gpu_mib", "explain_peak_gpu_mib",
                         "generate_rss_peak_mib", "explain_rss_peak_mib"})  # fmt: skip


class ErrorRecord(TypedDict):
    """A sample that failed: the error and the stage (data, image, generate, explain, score)."""

    id: str
    error: str
    stage: str
    meta: dict[str, Any]


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
    model: dict[str, Any]  # id, config_hash, model_hash, dtype, attn_implementation
    n_records: int
    n_ok: int
    n_errors: int
    errors_by_stage: dict[str, int]
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


def iter_records(path: Path, repair: bool = False) -> Iterator[dict]:
    """Stream the complete records of a ``samples.jsonl``, one line in memory at a time.

    Only the last line can be torn (a crash during its ``write``): it is skipped, and with
    ``repair`` truncated away once the file has been read to its end. A bad line with
    records after it means the file was damaged some other way: :class:`RunDirectoryError`
    names it.
    """
    if not path.exists():
        return
    good_end, bad_line = 0, None
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if bad_line is not None:
                raise RunDirectoryError(
                    f"{path} line {bad_line} is not a complete JSON record with an 'id' and records follow it; "
                    "the file was damaged (move it away to start the run again)"
                )
            record = _parse_record(line)
            if record is None:
                bad_line = number
                continue
            good_end += len(line)
            yield record
    if repair and bad_line is not None:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)


def _parse_record(line: bytes) -> dict | None:
    """The record on one line, or None when it is torn (no newline) or not a JSON object with an id."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


class RecordWriter:
    """Appends records to ``samples.jsonl``, one complete line per ``write``.

    Each line reaches the kernel before ``append`` returns, so a killed process loses
    nothing it recorded; ``fsync`` (which survives an OS crash too) runs at most once per
    ``sync_interval`` seconds and at close, since it costs milliseconds per call.
    """

    def __init__(self, path: Path, sync_interval: float = 1.0) -> None:
        self.path = path
        self.sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        line = memoryview((json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode())
        while line:  # write() may write less than asked (signals, nearly full disks)
            line = line[os.write(self._fd, line) :]
        if time.monotonic() - self._last_sync >= self.sync_interval:
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
