"""What one run is asked to do (:class:`RunConfig`), and the run defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xbench import provenance
from xbench.maps import DEFAULT_REFERENCE

DEFAULT_TASK = "easyvqa"
DEFAULT_MODEL = "tiny-llava-easyvqa"


@dataclass
class RunConfig:
    method: str
    task: str = DEFAULT_TASK
    model: str = DEFAULT_MODEL
    limit: int | None = None
    batch_size: int = 4
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    split: str | None = None
    data_dir: str | None = None
    method_params: dict[str, Any] = field(default_factory=dict)
    task_params: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] | None = None  # metric or preset names (xbench.presets); None: the "default" preset
    device: str | None = None
    dtype: str | None = None
    max_new_tokens: int | None = None
    warmup: int = 1
    fail_fast: bool = False
    progress: bool = True
    metric_params: dict[str, Any] = field(default_factory=dict)  # given to each metric that declares the key
    reference: str = DEFAULT_REFERENCE  # method whose maps agreement metrics compare with
    reference_params: dict[str, Any] = field(default_factory=dict)
    reference_run: Path | None = None  # read the reference maps from this earlier run instead
    control: str | None = None  # "randomized": also explain on a random-weight copy of the model

    def out_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.model).name)
        return Path("runs") / f"{self.method}-{self.task}-{slug}-{provenance.now().replace(':', '')}"
