"""Run records on disk: ``samples.jsonl`` (one line per sample) and ``summary.json``.

Each record is one ``write`` of a complete line, in the kernel before the next
sample starts; a line cut short by a crash is dropped (and truncated away) on resume.
``summary.json`` is replaced atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from xbench.api import Pooled
from xbench.errors import RunDirectoryError

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"


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
