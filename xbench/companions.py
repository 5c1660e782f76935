"""Maps computed beside the method's own, outside its timing.

* A **reference** for the agreement metrics: the reference method run on the same
  generations (:class:`InRunReference`; the method's own map when it is the reference
  itself), or the maps an earlier run of the same model, task and samples recorded
  (:class:`RecordedReference`, ``--reference-run DIR``: the reference computed once for
  many methods). Either way the model stays loaded as the run's method alone needs it.
* A **control** (``--control randomized``): the method re-run on the same architecture
  with seeded random weights (:class:`RandomizedControl`), so each map metric has the value
  an untrained model would get beside it.

Each source has ``bind(vlm, task)`` (once, after the model is loaded) and
``maps(vlm, generations, own_maps)`` returning one :class:`RelevanceMap` or exception per
generation; ``label`` names it in errors and ``describe()`` in the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from xbench.api import ATTENTIONS, HIDDEN_STATES, Generation, Method, RelevanceMap
from xbench.errors import RunDirectoryError, XbenchError
from xbench.records import SAMPLES, SUMMARY, load_map, method_label, read_records
from xbench.registry import Registry


class InRunReference:
    """The reference method explains the run's generations after the method (untimed).

    The model stays loaded as the run's method needs it: for a reference that needs attention
    weights the attention is switched to eager around its call (``vlm.attention``), and one that
    needs hidden states gets them from a teacher-forced forward (``vlm.last_hidden_states``).
    """

    def __init__(self, method: Method, same_as_run_method: bool) -> None:
        self.method = method
        self.same = same_as_run_method
        self.label = f"reference {method.label!r}"

    def bind(self, vlm, task) -> None:
        """Check the reference method's parameters against the loaded model (before any sample)."""
        if not self.same:
            self.method.check(vlm)

    def maps(self, vlm, generations: Sequence[Generation], own_maps: Sequence[RelevanceMap]) -> list:
        if self.same:
            return list(own_maps)
        needs = self.method.needs
        if HIDDEN_STATES in needs:
            generations = [g if g.hidden_states is not None else replace(g, hidden_states=vlm.last_hidden_states(g))
                           for g in generations]
        with vlm.attention("eager") if ATTENTIONS in needs else contextlib.nullcontext():
            return self.method.explain(vlm, generations)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method.label, "params": self.method.params, "source": "same run"}


class RecordedReference:
    """Maps read from an earlier run's records, matched by sample id and checked answer."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        summary_path = self.run_dir / SUMMARY
        if not summary_path.is_file():
            raise RunDirectoryError(f"reference run {str(self.run_dir)!r} has no {SUMMARY} (is it a finished run?)")
        try:
            self.summary = json.loads(summary_path.read_text())
        except ValueError as exc:
            raise RunDirectoryError(f"cannot read {summary_path}: {exc}") from None
        self.records = {r["id"]: r for r in read_records(self.run_dir / SAMPLES)}
        self.label = f"reference run {str(self.run_dir)!r}"

    def bind(self, vlm, task) -> None:
        """Refuse a run of another model, task, split or data."""
        theirs = self.summary
        pairs = [
            ("model config", theirs["model"].get("config_hash"), vlm.config_hash),
            ("model weights", theirs["model"].get("model_hash"), vlm.model_hash),
            ("task", theirs["task"].get("name"), task.name),
            ("split", theirs["task"].get("split"), task.split),
            ("task data", theirs["task"].get("data_hash"), task.data_hash()),
        ]
        for what, recorded, ours in pairs:
            if recorded != ours:
                raise RunDirectoryError(
                    f"{self.label} used another {what} ({recorded!r}, this run: {ours!r}); "
                    "a reference must come from the same model, task and samples"
                )

    def maps(self, vlm, generations: Sequence[Generation], own_maps) -> list:
        return [self._map(g) for g in generations]

    def _map(self, gen: Generation) -> RelevanceMap | XbenchError:
        rec = self.records.get(gen.sample_id)
        if rec is None:
            return XbenchError(f"{self.label} has no record of sample {gen.sample_id!r}")
        if "error" in rec:
            return XbenchError(f"{self.label} failed on sample {gen.sample_id!r}: {rec['error']}")
        if list(rec.get("answer_ids", [])) != list(gen.answer_ids):
            return XbenchError(
                f"{self.label} explained another answer for sample {gen.sample_id!r} ({rec.get('answer')!r} vs {gen.text!r})"
            )
        try:
            return RelevanceMap(load_map(self.run_dir, rec))
        except (OSError, ValueError, KeyError) as exc:
            return XbenchError(f"{self.label}: cannot read the map of sample {gen.sample_id!r}: {exc}")

    def describe(self) -> dict[str, Any]:
        return {"method": method_label(self.summary), "params": self.summary["method"].get("params", {}),
                "source": str(self.run_dir),
                "run_id": self.summary.get("run_id")}


class RandomizedControl:
    """The method on a copy of the model with seeded random weights, same generations."""

    kind = "randomized"

    def __init__(self, method: Method, seed: int) -> None:
        self.method = method
        self.seed = derived_seed("randomized-control", seed)
        self.label = f"{method.name!r} on the randomized control model"
        self.vlm = None

    def bind(self, vlm, task) -> None:
        """Build the control model (its identity: ``vlm.identity.randomized(seed)``) and check the method on it."""
        self.vlm = vlm.randomized(self.seed)
        self.method.check(self.vlm)

    def maps(self, vlm, generations: Sequence[Generation], own_maps) -> list:
        if HIDDEN_STATES in self.method.needs:
            generations = [replace(g, hidden_states=self.vlm.last_hidden_states(g)) for g in generations]
        return self.method.explain(self.vlm, generations)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "model": None if self.vlm is None else self.vlm.name}


#: ``--control`` name -> control class (``cls(method, seed)``, with ``bind``/``maps``/``describe``)
CONTROLS: Registry[type] = Registry("control")
CONTROLS.origin = __name__
CONTROLS.register(RandomizedControl, RandomizedControl.kind)


def derived_seed(purpose: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{purpose}:{seed}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def build_reference(config, registries, run_method: Method):
    """The reference source a run's config asks for."""
    if config.reference_run:
        return RecordedReference(Path(config.reference_run))
    cls = registries.methods.get(config.reference)
    ref = cls(**config.reference_params)
    ref.seed = config.seed
    same = cls is type(run_method) and ref.params == run_method.params
    return InRunReference(ref, same)


def build_control(config, registries, run_method: Method):
    """The control a run's config asks for (``--control``), or None."""
    if not config.control:
        return None
    control = CONTROLS.get(config.control)  # an unknown name: UnknownNameError with did-you-mean
    method = type(run_method)(**run_method.params)
    method.seed = run_method.seed
    return control(method, config.seed)
