"""Test helper: seeded random pictures of given sizes, and samples holding them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from xbench.api import Sample


def picture(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def samples_of(*sizes) -> list[Sample]:
    """One sample per ``(height, width)``, each with its own seeded picture."""
    return [Sample(id=f"s{i}", question="what shape is in the image?", answers=["circle"], image=picture(h, w, i))
            for i, (h, w) in enumerate(sizes)]  # fmt: skip
