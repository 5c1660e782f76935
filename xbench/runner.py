"""The run loop: for each batch, generate -> explain (measured) -> companions -> score -> append records.

No method, task or model name appears here: everything comes from the registries. How a
sample flows through the modules:

* :mod:`xbench.pipeline` (:func:`~xbench.pipeline.generate_explain`) loads its image, has the
  model answer and the method explain, validates the map and measures each phase
  (:mod:`xbench.cost`); a failure is retried on the batch's halves down to single samples
  (:mod:`xbench.batching`, which also absorbs CUDA out-of-memory);
* companion maps (:mod:`xbench.companions`: the reference for metrics that need one, the
  ``--control`` map) are made after the measured explain, here;
* :mod:`xbench.scoring` turns the outcome into a record (answer scores, each metric on the map
  and, as ``name@control``, on the control map; the map inline or as a side file);
* the record is appended to ``samples.jsonl`` (:mod:`xbench.records`); at the end
  :mod:`xbench.summary` aggregates the records into ``summary.json``.

What still fails becomes a per-sample error record and the run goes on (``fail_fast`` stops
instead, with a :class:`SampleFailedError` naming the sample and the stage).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from xbench import companions, presets, provenance, rundir
from xbench.api import REFERENCE, Sample, SampleError
from xbench.batching import batched, call_splitting, describe
from xbench.cost import PhaseTimes
from xbench.errors import ParameterError
from xbench.models import load_vlm
from xbench.pipeline import Outcome, generate_explain
from xbench.plugins import XbenchPlugins, default
from xbench.records import SUMMARY, RecordWriter, Summary, iter_records, write_json_atomic
from xbench.runconfig import DEFAULT_MODEL, DEFAULT_REFERENCE, DEFAULT_TASK, RunConfig
from xbench.scoring import FailPolicy, SampleFailedError, Scorer, build_metrics
from xbench.summary import summarise, timings

__all__ = ["DEFAULT_MODEL", "DEFAULT_REFERENCE", "DEFAULT_TASK", "Run", "RunConfig", "SampleFailedError", "batched",
           "call_splitting", "describe", "run", "seed_everything"]

def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """One model x one task x one method, streaming records into ``out_dir``."""

    def __init__(self, config: RunConfig, plugins: XbenchPlugins | None = None) -> None:
        self.config = config
        self.plugins = plugins or default()
        reg = self.plugins.registries
        if config.warmup < 0:
            raise ParameterError(f"warmup must be 0 or more batches, got {config.warmup}")
        if not 0 <= config.seed < 2**32:
            raise ParameterError(f"seed must be between 0 and 2**32 - 1 (numpy's range), got {config.seed}")
        method_cls, task_cls = reg.methods.get(config.method), reg.tasks.get(config.task)
        self.method = method_cls(**config.method_params)
        self.method.seed = config.seed
        self.task = task_cls(config.split, config.data_dir, **config.task_params)
        metric_names = presets.resolve(config.metrics, reg.metrics)
        self.metrics = build_metrics([reg.metrics.get(n) for n in metric_names], config.metric_params)
        needs_reference = any(REFERENCE in m.needs for m in self.metrics)
        self.reference = companions.build_reference(config, reg, self.method) if needs_reference else None
        self.control = companions.build_control(config, reg, self.method)
        self.out_dir = config.out_dir()
        self.max_new_tokens = config.max_new_tokens or self.task.max_new_tokens
        self.policy = FailPolicy(config.fail_fast)
        self.times = PhaseTimes()
        self.scorer = Scorer(self.task, self.metrics, self.out_dir, config.seed, self.control is not None,
                             self.policy, self.times)  # fmt: skip
        self.vlm = None

    # ---------------------------------------------------------------- top level
    def execute(self) -> Summary:
        cfg, wall_start = self.config, time.perf_counter()
        records_path = self._prepare_out_dir()
        done = {r["id"] for r in iter_records(records_path, repair=True)}
        seed_everything(cfg.seed)
        started = provenance.now()
        self._load_model()
        run_info = {"run_id": self.out_dir.name, "out_dir": str(self.out_dir), "method": cfg.method,
                    "task": cfg.task, "model": self.vlm.name, "config": self._config_dict()}  # fmt: skip
        self.plugins.hook.xbench_run_started(run=run_info)
        pending = (s for s in self.task.samples(cfg.limit, cfg.seed) if s.id not in done)
        total = None if cfg.limit is None else max(cfg.limit - len(done), 0)
        with RecordWriter(records_path) as writer, _progress(cfg.progress, total, self.method.name) as bar:
            for i, batch in enumerate(batched(pending, cfg.batch_size)):
                if i < cfg.warmup:
                    self._warm_up(batch)
                for outcome in self.process(batch):
                    record = self.scorer.safe_record(outcome)
                    writer.append(record)
                    self.plugins.hook.xbench_sample_recorded(run=run_info, record=record)
                    bar.update(1)
        # maps are left out: memory stays flat in the number of samples (maps are the bulk of a record)
        summary = summarise([_without_map(r) for r in iter_records(records_path)], run_id=self.out_dir.name,
                            task=self.task, method=self.method, metrics=self.metrics, vlm=self.vlm, seed=cfg.seed,
                            reference=self.reference, control=self.control, config=self._config_dict(),
                            started=started)  # fmt: skip
        summary["timings"] = timings(self.times.seconds, time.perf_counter() - wall_start)
        write_json_atomic(self.out_dir / SUMMARY, summary)
        self.plugins.hook.xbench_run_finished(run=run_info, summary=summary)
        return summary

    def _prepare_out_dir(self) -> Path:
        """Check, create, lock and identify the run folder before any work (:mod:`xbench.rundir`);
        returns the records path. The lock is held by ``self.run_folder``."""
        self.run_folder = rundir.prepare(self)
        return self.run_folder.records

    def _load_model(self) -> None:
        cfg = self.config
        with self.times.timed("model_load"):
            self.vlm = load_vlm(cfg.model, self.plugins.registries, needs=self.method.needs, device=cfg.device,
                                dtype=cfg.dtype)  # fmt: skip
            self.method.check(self.vlm)  # values that need the model, before the first sample
            for source in (self.reference, self.control):
                if source is not None:
                    source.bind(self.vlm, self.task)
        self.scorer.vlm = self.vlm

    def _warm_up(self, batch: list) -> None:
        """One unrecorded generate + explain on the batch (its time counted as ``warmup``).

        Failures are left alone here: :meth:`process` meets them again and records (or, with
        ``fail_fast``, raises) them with the sample they belong to.
        """
        with self.times.timed("warmup"):
            generate_explain(self.vlm, self.task, self.method, batch, self.max_new_tokens)

    # ---------------------------------------------------------------- one batch
    def process(self, batch: Sequence[Sample | SampleError]) -> list[Outcome]:
        """Generate, explain and validate a batch, then its companion maps; every input gets exactly one outcome."""
        outcomes = generate_explain(self.vlm, self.task, self.method, batch, self.max_new_tokens,
                                    on_failure=self.policy.on_failure)  # fmt: skip
        for o in outcomes:
            self.times.add("generate", o.generate.seconds)
            self.times.add("explain", o.explain.seconds)
        with self.times.timed("companions"):
            self.add_companions([o for o in outcomes if o.ok])
        return outcomes

    def add_companions(self, explained: list[Outcome]) -> None:
        """Reference and control maps for the explained outcomes (unmeasured; failures kept per sample)."""
        for field_name, source in (("reference", self.reference), ("control", self.control)):
            if source is None:
                continue

            def make(items, source=source):
                return source.maps(self.vlm, [o.generation for o in items], [o.rmap for o in items])

            for o, result, _ in call_splitting(make, explained, self.vlm.device):
                if not isinstance(result, Exception):
                    try:
                        setattr(o, field_name, result.validate(o.generation.grid, source.label))
                        continue
                    except Exception as exc:
                        result = exc
                message = f"{source.label} failed: {describe(result)}"
                self.policy.check(o.sample.id, field_name, message, result)
                setattr(o, f"{field_name}_error", message)

    def _config_dict(self) -> dict:
        d = asdict(self.config)
        d["out"] = str(self.out_dir)
        d["max_new_tokens"] = self.max_new_tokens
        return d


def _without_map(record: dict) -> dict:
    """The record without its maps (the summary never reads them; they dominate its size)."""
    record.pop("map", None)
    record.pop("control_map", None)
    return record


def _progress(enabled: bool, total: int | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False)


def run(config: RunConfig, plugins: XbenchPlugins | None = None) -> Summary:
    """Execute one run and return its summary (also written to ``<out>/summary.json``)."""
    with rundir.held(Run(config, plugins)) as one_run:
        return one_run.execute()
