"""Relevance maps drawn over images, for ``xbench report`` and ``xbench show``.

A map is min-max scaled to [0, 1] for display and nearest-upsampled (one block per patch). It
is drawn in one hue (:data:`HUE`), its opacity rising with relevance, over the image in
greyscale: no colour of the image can be read as relevance, and a patch's relevance is how
strongly it is tinted. :func:`colour_bar` draws the same blend over a light and a dark grey,
so the bar reads as the maps do over light and dark image regions. The image is centre-cropped to a square, as CLIP-style
processors show it to the model.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from xbench.records import load_map

HUE = (230, 25, 75)  # a saturated red
MAX_OPACITY = 0.85
CELL_PX = 128
GREY = 128
LIGHT, DARK = 225, 60  # the two greys the colour bar shows the tint over


def png_data_uri(image) -> str:
    """A PIL image, or a matplotlib figure, as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buf, format="png", dpi=110)
    else:
        image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def centre_square(image):
    """The centre square of an image (CLIP's resize-shortest-edge + centre-crop view)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def scaled(grid: np.ndarray) -> np.ndarray:
    """The map min-max scaled to [0, 1] (all zeros for a constant map)."""
    g = np.asarray(grid, dtype=np.float64)
    span = g.max() - g.min()
    return (g - g.min()) / span if span > 0 else np.zeros_like(g)


def blend(grey: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]``: :data:`HUE` over a greyscale ``[H, W]`` image, opacity ``relevance * MAX_OPACITY``."""
    alpha = (relevance * MAX_OPACITY)[..., None]
    out = (1 - alpha) * grey[..., None].astype(np.float64) + alpha * np.array(HUE, dtype=np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay(image, grid: np.ndarray, size: int = CELL_PX, layout=None):
    """The scaled map in one hue over the image in greyscale (over mid-grey without an image).

    With the record's ``layout`` (:class:`~xbench.image_layout.ImageLayout`) each cell is painted
    over the box of the original image it covers (the whole image, stretched to ``size``; pixels
    no cell covers stay untinted); without one (runs recorded before layouts) the map is laid over
    the image's centre square, as CLIP-style processors show it."""
    from PIL import Image

    if layout is not None:
        painted = np.nan_to_num(layout.paint(scaled(np.asarray(grid).reshape(-1)), size=(size, size)), nan=0.0)
        view = image.convert("L") if image is not None else None
    else:
        painted = np.asarray(Image.fromarray((scaled(grid) * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.NEAREST), dtype=np.float64) / 255
        view = centre_square(image.convert("L")) if image is not None else None
    if view is None:
        grey = np.full((size, size), GREY, dtype=np.uint8)
    else:
        grey = np.asarray(view.resize((size, size), Image.Resampling.BICUBIC))
    return Image.fromarray(blend(grey, painted))


def record_layout(record: dict):
    """The :class:`~xbench.image_layout.ImageLayout` a record carries, or None (older runs, or a
    malformed one: the overlay then falls back to the centre square)."""
    from xbench.image_layout import from_record

    try:
        return from_record(record["layout"]) if isinstance(record.get("layout"), dict) else None
    except ValueError:
        return None


def colour_bar(width: int = 256, height: int = 14):
    """The display scale from the least (left) to the most (right) relevant patch: the tint over a
    light grey (top half) and a dark grey (bottom half), as it looks over such image regions."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 1, width), (height, 1))
    grey = np.full((height, width), LIGHT, dtype=np.uint8)
    grey[height // 2 :] = DARK
    return Image.fromarray(blend(grey, ramp))


def record_map(run_dir, record: dict, key: str = "map") -> np.ndarray | None:
    """A record's map (``map``: inline or its ``maps/*.npy`` sidecar; ``control_map``: inline),
    None if absent or unreadable."""
    try:
        if key == "map":
            return load_map(run_dir, record)
        return None if record.get(key) is None else np.asarray(record[key], dtype=np.float32)
    except (KeyError, OSError, ValueError):
        return None


def sample_images(summary: dict, ids: set[str]) -> tuple[dict[str, Any], str | None]:
    """``({id: PIL image}, note)``: the run's task re-opened to find the images of ``ids``."""
    from xbench.plugins import default

    cfg = summary.get("config", {})
    try:
        task_cls = default().registries.tasks.get(summary["task"]["name"])
        task = task_cls(cfg.get("split"), cfg.get("data_dir"), **(cfg.get("task_params") or {}))
        images = {}
        for s in task.samples(cfg.get("limit"), cfg.get("seed", 0)):
            if s.id in ids and hasattr(s, "load_image"):
                images[s.id] = s.load_image()
                if len(images) == len(ids):
                    break
        missing = ids - set(images)
        return images, (f"images not found for {len(missing)} sample(s)" if missing else None)
    except Exception as exc:  # the data may not be on this machine: show maps alone
        return {}, f"images unavailable ({type(exc).__name__}: {exc}); maps shown alone"
