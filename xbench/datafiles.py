"""Reading data files strictly: the helpers every task adapter (and :meth:`xbench.api.Sample.load_image`)
reads through.

* only regular files are opened, and without blocking first (:func:`open_regular`): a named pipe
  or a directory is refused by name, never waited on;
* JSON is parsed strictly (:func:`parse_json`): a key repeated in one object is refused (plain
  JSON keeps the last value silently) and non-finite numbers (``NaN``, ``Infinity``, ``1e999``)
  become :class:`NonFinite`, which no field's type check accepts;
* values are checked for the type the format gives them (:func:`integer`, :func:`text`,
  :func:`finite_numbers`) and described as written (:func:`describe`) in per-sample errors;
* images are held to a pixel budget read from the header before decoding (:func:`check_image_size`).

A file that is wrong as a whole is a :class:`~xbench.errors.DataError` naming it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, NamedTuple

from xbench.errors import BadImageError, DataError

#: Images are refused, from their header and before decoding, above this many pixels (PIL's own
#: decompression-bomb warning starts at about 89.5 million) ...
MAX_IMAGE_PIXELS = 40_000_000
#: ... or when the longer side is more than this many times the shorter: processors resize the
#: short side to a fixed size (336 px for LLaVA-1.5), so a 30000x1 strip would become gigapixels.
MAX_ASPECT_RATIO = 50


class NotARegularFile(OSError):
    """Raised by :func:`open_regular` for a directory, named pipe, device or socket."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading when it is a regular file (symbolic links followed).

    The file is opened without blocking and checked with ``fstat`` before any byte is read, so a
    named pipe cannot hang the caller; anything but a regular file is a :class:`NotARegularFile`
    whose message says what it is. A missing file raises ``FileNotFoundError`` as ``open`` does.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
            raise NotARegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_still_image(image, source: Any) -> None:
    """Refuse (:class:`BadImageError`) a file of several frames (an animation or a video): the
    model adapters lay out one still image per prompt, and PIL would silently read the first."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise BadImageError(f"image {source} has {frames} frames (an animation or video); "
                            "xbench explains one still image per prompt")


def check_image_size(size: tuple[int, int], source: Any) -> None:
    """Refuse (:class:`BadImageError`) an image whose header claims more than :data:`MAX_IMAGE_PIXELS`
    pixels or an aspect ratio above :data:`MAX_ASPECT_RATIO`, before it is decoded."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImageError(
            f"image {source} refused as too large: {width}x{height} = {width * height} pixels exceeds limit of "
            f"{MAX_IMAGE_PIXELS} pixels (checked from its header before decoding)"
        )
    if min(width, height) >= 1 and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImageError(
            f"image {source} refused: {width}x{height} has an aspect ratio of {max(width, height) / min(width, height):.0f}:1, "
            f"above the limit of {MAX_ASPECT_RATIO}:1 (resizing its short side would cost "
            f"{max(width, height) // min(width, height)}x the pixels of a square image)"
        )


class NonFinite:
    """A JSON number that is not finite (``NaN``, ``Infinity``, ``1e999``), kept as its text so that
    a field holding it fails the type check that field has, naming the value as written."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


class RepeatedKeyError(ValueError):
    """A key repeated in one JSON object (plain JSON would keep only its last value)."""

    def __init__(self, key: str) -> None:
        super().__init__(repeated_key_message(key))
        self.key = key


def parse_json(text: str, object_hook: Callable[[dict], Any] | None = None) -> Any:
    """``json.loads`` made strict: a key repeated in one object raises :class:`RepeatedKeyError` (plain
    JSON would keep the last value silently); non-finite numbers become :class:`NonFinite`."""

    def pairs(items: list[tuple[str, Any]]) -> Any:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            raise RepeatedKeyError(next(k for k, _ in items if k in seen or seen.add(k)))
        return object_hook(obj) if object_hook is not None else obj

    return json.loads(text, object_pairs_hook=pairs, parse_float=_parse_float, parse_constant=NonFinite)


def repeated_key_message(key: str) -> str:
    return f"repeats the key {key!r} in one object; JSON would keep only its last value, so xbench refuses to guess which is meant"


def describe(value: Any) -> str:
    """``value`` as written, with its JSON type: ``1.9 (a float)``, ``'1' (a string)``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, NonFinite):
        return f"{value.text} (not a finite number)"
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "an object"}
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


def integer(value: Any) -> int | None:
    """``value`` when it is a JSON integer (not a float such as ``1.0`` or ``1.9``, not a boolean)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def finite_numbers(values: Iterable[Any]) -> bool:
    """Whether every value is a JSON number (not a boolean, not :class:`NonFinite`)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


class Record(NamedTuple):
    """One entry of a JSON-lines file or of a JSON array, as :func:`read_records` gives it."""

    where: str  # "file.json:3" (line 3) or "file.json: entry [2]"
    ref: str  # "line 3" or "entry [2]"
    meta: dict  # {"line": 3} or {"entry": 2}
    sid: str  # a sample id for an entry that has none: "line-3" or "entry-2"
    value: Any  # the parsed object, or the ValueError saying why the line is not one


def read_records(path: Path, what: str) -> list[Record]:
    """The entries of ``path``: JSON lines (blank lines skipped), or one JSON array when the file
    starts with ``[``. Each line is parsed strictly (:func:`parse_json`) on its own, so a bad line
    is one :class:`Record` holding the reason; an unreadable file, text that is not UTF-8 or an
    array that does not parse is a :class:`DataError` naming the file."""
    try:
        with open_regular(path) as fh:
            body = fh.read().decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {what} {str(path)!r}: not UTF-8 text ({exc})") from None
    if body.lstrip().startswith("["):
        try:
            entries = parse_json(body)
        except RepeatedKeyError as exc:
            raise DataError(f"{str(path)!r} {repeated_key_message(exc.key)}") from None
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{str(path)!r} is not valid JSON ({exc}); expected {what}") from None
        return [Record(f"{path.name}: entry [{i}]", f"entry [{i}]", {"entry": i}, f"entry-{i}", v) for i, v in enumerate(entries)]
    records = []
    for n, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except RepeatedKeyError as exc:
            value = exc
        except (ValueError, RecursionError) as exc:
            value = ValueError(f"not valid JSON ({exc})")
        records.append(Record(f"{path.name}:{n}", f"line {n}", {"line": n}, f"line-{n}", value))
    return records


def text(value: Any) -> str | None:
    """``value`` when it is a string with some non-space character (not null, a number or a list)."""
    return value if isinstance(value, str) and value.strip() else None


def load_json(path: Path, what: str, object_hook: Callable[[dict], Any] | None = None) -> Any:
    """Parse a JSON file strictly (:func:`parse_json`); an unreadable or non-regular file, invalid
    JSON or a key repeated in one object is a :class:`DataError` naming the file and what was expected.

    The raw bytes are dropped once decoded, before parsing, so a large file costs its text
    once (not bytes + text) on top of the parsed objects; ``object_hook`` may shrink those.
    """
    try:
        with open_regular(path) as fh:
            raw = fh.read()
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        del raw
        return parse_json(text, object_hook)
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except RepeatedKeyError as exc:
        raise DataError(f"{str(path)!r} {repeated_key_message(exc.key)}") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc}); expected {what}") from None


def file_digest(paths: Iterable[Path | None]) -> str:
    """First 16 hex digits of a sha256 over the names and bytes of ``paths`` (None entries skipped)."""
    h = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        h.update(path.name.encode() + b"\0")
        with open_regular(path) as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


