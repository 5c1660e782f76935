"""Which labelled samples a FastRM proxy trains, validates and is tested on.

:class:`SplitPlan` says it (splits, sample counts, copies, noise); :class:`FastRMData` labels
the samples through the label cache (:func:`xbench.fastrm.labels.build_labels`) and applies
the policy:

* **test**: the first ``test_samples`` of the held-out split in the task's seeded order,
  labelled with the noise-ceiling perturbation when ``noise_std > 0``;
* **train**: the first ``samples`` of the training split, plus one copy of them per
  ``augment`` entry (the same samples under extra task parameters);
* **validation**, by default from the held-out split: samples past the test ones whose
  image (the task's ``image_key`` meta field) no test sample shows, so that validation never
  sees a test image. With ``val_split`` equal to the training split: the samples right after
  the training ones (copies never include them).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from xbench.errors import ParameterError


@dataclass(frozen=True)
class SplitPlan:
    """The samples of one proxy's training, validation and test (see the module docstring)."""

    task: str
    task_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    test_split: str = "test"
    test_samples: int = 1000
    train_split: str = "train"
    samples: int = 0  # 0: a plan without training (scoring a proxy only)
    val_split: str | None = None  # None: the held-out (test) split
    val_samples: int = 0
    augment: tuple[dict[str, Any], ...] = ()
    noise_std: float = 0.0

    @property
    def validation_split(self) -> str:
        return self.val_split or self.test_split

    def val_from(self) -> str:
        """Where the validation samples come from, in words."""
        if self.validation_split == self.train_split:
            return f"{self.train_split} split, the samples after the training ones (they may show training images)"
        if self.validation_split == self.test_split:
            return f"{self.test_split} split, past the test samples, on images none of them shows"
        return f"{self.validation_split} split"


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class LabelSettings:
    """How labels are made: batch size, answer length, progress bar, log, store dtype (None: the
    model's) and shard size (:func:`xbench.fastrm.labels.build_labels`)."""

    batch_size: int = 16
    max_new_tokens: int | None = None
    progress: bool = True
    log: Callable[[str], None] = log_stderr
    store_dtype: str | None = None
    shard_bytes: int = 256 * 2**20


class FastRMData:
    """The labelled train / validation / test sets of a :class:`SplitPlan` for one model and reference."""

    def __init__(self, plan: SplitPlan, vlm, reference, cache: Path | None, settings: LabelSettings | None = None):
        self.plan, self.vlm, self.reference, self.cache = plan, vlm, reference, cache
        self.settings = settings or LabelSettings()
        self._tasks: dict[tuple, object] = {}  # (split, extra parameters) -> task: each data file read once

    def task(self, split: str, extra: dict | None = None):
        """The task adapter on ``split`` with the plan's and ``extra`` task parameters (built once:
        a task's ``samples()`` can be iterated again, so labelling, validation and test share it)."""
        from xbench.plugins import default

        key = (split, json.dumps(extra or {}, sort_keys=True, default=str))
        if key not in self._tasks:
            params = {**self.plan.task_params, **(extra or {})}
            self._tasks[key] = default().registries.tasks.get(self.plan.task)(split, **params)
        return self._tasks[key]

    def check_tasks(self) -> None:
        """Build every task the plan uses (a bad task or parameter fails here, before any model load)."""
        p = self.plan
        self.task(p.test_split)
        if p.samples:
            self.task(p.train_split)
            self.task(p.validation_split)
        for extra in p.augment:
            self.task(p.train_split, extra)

    def labels(self, split: str, n: int, noise: bool, extra: dict | None = None):
        """The first ``n`` labelled samples of ``split`` (cached), perturbed copies when ``noise``."""
        from xbench.fastrm.labels import build_labels

        st = self.settings
        return build_labels(
            self.vlm,
            self.task(split, extra),
            self.reference,
            n,
            seed=self.plan.seed,
            cache_root=self.cache,
            batch_size=st.batch_size,
            noise_std=self.plan.noise_std if noise else None,
            max_new_tokens=st.max_new_tokens,
            store_dtype=st.store_dtype,
            shard_bytes=st.shard_bytes,
            progress=st.progress,
            log=st.log,
        )

    def test(self):
        p = self.plan
        return self.labels(p.test_split, p.test_samples, noise=p.noise_std > 0)

    def train_val(self):
        """``(train, val)``: the training samples with their copies, and the validation samples."""
        from xbench.fastrm.labels import LabelSet

        p = self.plan
        if p.validation_split == p.train_split:
            n = p.samples + p.val_samples
            train, val = self._split(self.labels(p.train_split, n, noise=False))
            held = set(val.positions)  # a copy keeps the samples the plain training set holds, never validation's
            copies = [c.subset([i for i, pos in enumerate(c.positions) if pos not in held])
                      for c in (self.labels(p.train_split, n, False, extra) for extra in p.augment)]  # fmt: skip
        else:
            train = self.labels(p.train_split, p.samples, noise=False)
            copies = [self.labels(p.train_split, p.samples, False, extra) for extra in p.augment]
            val = self.heldout_val()
        return (LabelSet.concat([train, *copies]) if copies else train), val

    def heldout_val(self):
        """``val_samples`` of the validation split in its seeded order; on the test split, only
        samples past the test ones whose image (the task's ``image_key``) no test sample shows."""
        from xbench.plugins import default

        p = self.plan
        on_test = p.validation_split == p.test_split
        key = default().registries.tasks.get(p.task).image_key
        taken, seen = set(), set()
        if on_test:
            test = self.test()
            taken = set(test.ids)
            seen = {m.get(key, sid) for sid, m in zip(test.ids, test.meta)}
            if not any(key in m for m in test.meta):
                self.settings.log(f"warning: no test sample has meta {key!r} (the task's image_key): validation "
                                  "samples may show test images")  # fmt: skip
        n, found = (p.test_samples + 2 * p.val_samples if on_test else p.val_samples), -1
        while True:
            data = self.labels(p.validation_split, n, noise=on_test and p.noise_std > 0)
            keep = [i for i, (sid, m) in enumerate(zip(data.ids, data.meta))
                    if sid not in taken and m.get(key, sid) not in seen]  # fmt: skip
            if len(keep) >= p.val_samples or len(data) == found:  # enough, or the split is used up
                break
            found, n = len(data), 2 * n
        if not keep:
            raise ParameterError(
                f"no validation samples in the {p.val_from()}: ask for fewer --test-samples, or "
                f"validate on the training split (--val-split {p.train_split})"
            )
        if len(keep) < p.val_samples:
            self.settings.log(f"only {len(keep)} validation samples in the {p.val_from()}")
        return data.subset(keep[: p.val_samples])

    def _split(self, data):
        p = self.plan
        if len(data) < 2:
            raise ParameterError(f"only {len(data)} labelled training samples")
        n_val = min(p.val_samples, len(data) // 5) if len(data) < p.samples + p.val_samples else p.val_samples
        return data.subset(range(len(data) - n_val)), data.subset(range(len(data) - n_val, len(data)))

    def confidence(self, proxy_dir, n: int) -> dict | None:
        """Confidence AUROC on ``n`` held-out answers of the test split (-1: all; None when 0)."""
        from xbench.fastrm.evaluate import confidence_on_task
        from xbench.plugins import default

        if not n:
            return None
        method = default().registries.methods.get("fastrm")(proxy=str(proxy_dir))
        return confidence_on_task(
            self.vlm,
            self.task(self.plan.test_split),
            method,
            None if n < 0 else n,
            seed=self.plan.seed,
            batch_size=self.settings.batch_size,
            progress=self.settings.progress,
        )
