"""The one generate -> explain path: images loaded, the model answers, the method explains,
maps are validated, costs measured per phase.

The run loop (its batches and its warm-up), FastRM labelling and FastRM evaluation all call
:func:`generate_explain`; nothing else generates and explains. Each phase goes through
:func:`~xbench.batching.call_splitting`, so a failing sample (or out-of-memory) costs only
itself: every input comes back as exactly one :class:`Outcome`, explained or carrying an error
and the stage it failed at (``data``, ``image``, ``generate``, ``explain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from xbench.api import Generation, RelevanceMap, Sample, SampleError
from xbench.batching import call_splitting, describe
from xbench.cost import Measurement
from xbench.errors import MapValidationError, XbenchError


@dataclass
class Outcome:
    """A sample's path through one batch: its generation, map and per-phase costs, or an error.

    ``reference`` / ``control`` (and their errors) are filled in later by the run loop's
    companion maps; the generate -> explain path leaves them empty.
    """

    sample: Sample | SampleError
    generation: Generation | None = None
    rmap: RelevanceMap | None = None
    generate: Measurement = field(default_factory=Measurement)
    explain: Measurement = field(default_factory=Measurement)
    error: str | None = None
    stage: str | None = None
    reference: RelevanceMap | None = None
    reference_error: str | None = None
    control: RelevanceMap | None = None
    control_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.rmap is not None


FailureHook = Callable[[Outcome, BaseException | None], None]


def generate_explain(
    vlm,
    task,
    method,
    batch: Sequence[Sample | SampleError],
    max_new_tokens: int,
    keep: frozenset[str] | None = None,
    on_failure: FailureHook | None = None,
) -> list[Outcome]:
    """Outcomes of ``batch`` in its order: ``task``'s prompt answered by ``vlm`` (keeping
    ``keep``, default ``method.needs``), explained by ``method``, each map validated against the
    generation's grid.

    ``on_failure(outcome, cause)`` is called as soon as a sample fails, after its ``error`` and
    ``stage`` are set (the run loop's ``--fail-fast`` raises from it).
    """
    keep = frozenset(method.needs) if keep is None else keep
    outcomes = [Outcome(s) for s in batch]

    def fail(o: Outcome, message: str, stage: str, cause: BaseException | None = None) -> None:
        o.error, o.stage = message, stage
        if on_failure is not None:
            on_failure(o, cause)

    ready = _load_images(outcomes, fail)

    def generate(items: list[Outcome]) -> list[Generation]:
        samples = [o.sample for o in items]
        return vlm.generate(samples, [task.prompt(s) for s in samples], max_new_tokens, keep)

    generated = []
    for o, result, measured in call_splitting(generate, ready, vlm.device):
        if isinstance(result, Exception):
            fail(o, f"generation failed: {describe(result)}", "generate", result)
        else:
            o.generation, o.generate = result, measured
            generated.append(o)

    def explain(items: list[Outcome]) -> list:
        return method.explain(vlm, [o.generation for o in items])

    for o, result, measured in call_splitting(explain, generated, vlm.device):
        if isinstance(result, Exception):
            fail(o, f"method {method.name!r} failed: {describe(result)}", "explain", result)
            continue
        try:
            o.rmap = _validated(result, o.generation, method.name)
        except XbenchError as exc:
            fail(o, str(exc), "explain", exc)
            continue
        o.explain = measured
    return outcomes


def _load_images(outcomes: list[Outcome], fail) -> list[Outcome]:
    """The outcomes whose sample is readable and whose image loads (the others failed)."""
    ready = []
    for o in outcomes:
        if isinstance(o.sample, SampleError):
            fail(o, o.sample.error, "data")
            continue
        try:
            o.sample.load_image()
            ready.append(o)
        except Exception as exc:
            fail(o, describe(exc), "image", exc)
    return ready


def _validated(result, generation: Generation, method_name: str) -> RelevanceMap:
    if not isinstance(result, RelevanceMap):
        raise MapValidationError(f"method {method_name!r} returned a {type(result).__name__}, not a RelevanceMap")
    return result.validate(generation.grid, method_name)
