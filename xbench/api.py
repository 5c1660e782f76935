"""The contracts every plugin works against.

Data flow of one run (one model x one task x one method)::

    Task.samples() -> Sample -> VLM.generate() -> Generation
                               -> Method.explain(vlm, generations) -> RelevanceMap
                               -> Task.score(sample, answer), Metric.compute(...) -> record

Methods never load models or read files; tasks never touch the model; the runner
never names a method, task or model. Everyone else sees a model only through the
:class:`VLM` contract (``xbench/vlm.py``, re-exported here); ``needs`` values are the
constants below, checked when a plugin registers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from xbench.columns import group_column
from xbench.errors import BadImageError, MapValidationError
from xbench.params import Param, resolve
from xbench.image_layout import ImageLayout  # noqa: F401  (re-exported)
from xbench.vlm import VLM, ForwardOutput, Generation, ModelIdentity  # noqa: F401  (the model contract, re-exported)

# --------------------------------------------------------------------------- needs
#: what a :class:`Method` may declare in ``needs``
ATTENTIONS = "attentions"  # attention weights: the model is loaded with eager attention
GRADIENTS = "gradients"  # backpropagation through the model
HIDDEN_STATES = "hidden_states"  # generate keeps the last hidden states (Generation.hidden_states)
METHOD_NEEDS = frozenset({ATTENTIONS, GRADIENTS, HIDDEN_STATES})
#: what a :class:`Metric` may declare in ``needs`` (each names what the runner hands it in :class:`MetricContext`)
MODEL = "model"  # the loaded VLM, to re-forward perturbed inputs
REFERENCE = "reference"  # the reference method's map of the same generation
CONTROL = "control"  # the method's map on the ``--control`` model (MetricContext.control)
METRIC_NEEDS = frozenset({MODEL, REFERENCE, CONTROL})

# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One question about one image.

    ``image_path`` is opened lazily by :meth:`load_image` (a task may instead set
    ``image`` directly). ``answers`` holds every gold answer used for scoring;
    ``gt_mask`` is a boolean ``H x W`` array on image pixels, when the task has one.
    """

    id: str
    question: str
    answers: list[str]
    image_path: Path | None = None
    image: Any = None  # PIL.Image.Image once loaded
    gt_mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        """Return the image as RGB PIL, opening ``image_path`` on first use.

        Raises :class:`BadImageError` naming the file when it is missing, not a regular file (a
        named pipe is refused without being read), unreadable, or over xbench's pixel budget: more
        than :data:`xbench.datafiles.MAX_IMAGE_PIXELS` pixels or an aspect ratio above
        :data:`xbench.datafiles.MAX_ASPECT_RATIO`, read from the header before the pixels are
        decoded (PIL's own decompression-bomb limit is kept too). See :func:`to_rgb` for the conversion.
        """
        if self.image is None:
            import warnings

            from PIL import Image, UnidentifiedImageError

            from xbench.datafiles import check_image_size, open_regular

            if self.image_path is None:
                raise BadImageError(f"sample {self.id!r} has neither an image nor an image path")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with open_regular(self.image_path) as fh, Image.open(fh) as im:
                        check_image_size(im.size, self.image_path)
                        if getattr(im, "n_frames", 1) > 1:
                            raise BadImageError(
                                f"image {self.image_path} has {im.n_frames} frames (an animation or video); "
                                "xbench explains one still image per prompt"
                            )
                        im.load()
                        self.image = to_rgb(im, self.image_path)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise BadImageError(f"image {self.image_path} refused as too large: {exc}") from None
            except FileNotFoundError:
                raise BadImageError(f"image file not found: {self.image_path}") from None
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise BadImageError(f"cannot read image {self.image_path}: {reason}") from None
            if min(self.image.size) < 1:
                raise BadImageError(f"image {self.image_path} is empty ({self.image.size})")
        return self.image


def to_rgb(image, source: Any = "image"):
    """An 8-bit RGB copy of a PIL image.

    Grayscale, palette, RGBA (alpha dropped), CMYK... convert as PIL converts them; 16- and
    32-bit integer grayscale is scaled from the 16-bit range (PIL would clip it at 255,
    turning most of the image white); floating-point images are refused, their range being
    unknown.
    """
    from PIL import Image

    if image.mode.startswith("I"):
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    elif image.mode == "F":
        raise BadImageError(f"image {source} has floating-point pixels (mode F) of unknown range; save it as 8-bit")
    return image.convert("RGB")


@dataclass
class SampleError:
    """A sample a task could not build (bad line, missing answers...).

    The runner records it as a per-sample error and carries on.
    """

    id: str
    error: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- maps


#: ``RelevanceMap.extras`` key of a method's own decision threshold on its map
DECISION_THRESHOLD = "decision_threshold"


@dataclass
class RelevanceMap:
    """A method's answer: relevance over the image-patch grid.

    ``grid`` is float32 of the generation's map shape (``Generation.grid``: ``[h, w]`` on a
    one-grid layout, ``[N]`` over the cells of several; the common currency of all metrics);
    ``per_token`` optionally ``[T, *grid]`` for each answer token; ``extras`` holds
    scalars such as a confidence. A method whose map comes with its own calibrated cut
    (a patch is relevant when ``grid >= t``) puts ``t`` in ``extras[DECISION_THRESHOLD]``.
    Validation happens in :meth:`validate`.
    """

    grid: np.ndarray
    per_token: np.ndarray | None = None
    extras: dict[str, float] = field(default_factory=dict)

    def validate(self, expected_grid: tuple[int, ...], method: str) -> "RelevanceMap":
        """Coerce to float32 and check shape and finiteness; errors name ``method``."""
        grid = np.asarray(self.grid, dtype=np.float32)
        if grid.shape != tuple(expected_grid):
            raise MapValidationError(
                f"method {method!r} returned a map of shape {grid.shape}, expected {tuple(expected_grid)}"
            )
        if not np.all(np.isfinite(grid)):
            raise MapValidationError(f"method {method!r} returned a map with NaN or infinite values")
        self.grid = grid
        if self.per_token is not None:
            pt = np.asarray(self.per_token, dtype=np.float32)
            if pt.ndim != 1 + len(expected_grid) or pt.shape[1:] != tuple(expected_grid) or not np.all(np.isfinite(pt)):
                raise MapValidationError(
                    f"method {method!r} returned per-token maps of shape {pt.shape} "
                    f"(expected [T, {', '.join(map(str, expected_grid))}], finite)"
                )
            self.per_token = pt
        for key, value in self.extras.items():
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise MapValidationError(f"method {method!r} returned a non-finite extra {key!r}={value!r}")
        return self


# --------------------------------------------------------------------------- plugins


def seeded_rng(*key: Any) -> np.random.Generator:
    """A numpy generator fixed by ``key`` (joined with ":", hashed): the same key, the same draws."""
    import hashlib

    digest = hashlib.sha256(":".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class Parameterised:
    """A plugin built from keyword parameters declared in :attr:`parameters`.

    The constructor resolves them once with :func:`xbench.params.resolve` into :attr:`params`
    (unknown keys, wrong types, choices, ranges and non-finite numbers are a
    :class:`~xbench.errors.ParameterError` naming ``kind``, ``name``, the key and the value);
    nothing after construction checks a value again. :meth:`default_params` gives the
    declared defaults. A plugin written before declarations existed may instead override
    :meth:`default_params`: its keys are then accepted with any finite value.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    parameters: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = resolve(self.kind, self.name, self.declared_params(), params)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The parameters this accepts, with their defaults."""
        return {key: param.default for key, param in cls.parameters.items()}

    @classmethod
    def declared_params(cls) -> dict[str, Param]:
        """:attr:`parameters`, or for a plugin overriding :meth:`default_params` its keys (typed
        where :attr:`parameters` declares them, with the overridden defaults)."""
        if getattr(cls.default_params, "__func__", None) is Parameterised.default_params.__func__:
            return dict(cls.parameters)
        untyped = Param(None, type=object, nullable=True)
        return {
            key: replace(cls.parameters.get(key, untyped), default=value) for key, value in cls.default_params().items()
        }


class Method(Parameterised):
    """Base class of explanation methods. One subclass per module in ``methods/``.

    Subclasses set ``name``, ``description`` and ``needs`` (a subset of :data:`METHOD_NEEDS`:
    :data:`ATTENTIONS`, :data:`GRADIENTS`, :data:`HIDDEN_STATES`, checked when registered) and
    implement :meth:`explain`, using the model only through the :class:`VLM` contract.
    Constructor keyword arguments are the method's parameters (``--param k=v``), declared in
    :attr:`parameters`; :attr:`params` records them, checked, for the summary. ``requires``
    names the optional modules the method imports (e.g. ``("captum",)``): a missing one is
    refused at construction with the command that installs it. :meth:`check` refuses, once
    the model is loaded and before the first sample, parameter values that do not fit that model.
    """

    kind = "method"
    description: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[tuple[str, ...]] = ()
    seed: int = 0  # set by the runner; use :meth:`rng` for any random choice

    def __init__(self, **params: Any) -> None:
        require_modules(self.requires, f"{self.kind} {self.name!r}")
        super().__init__(**params)

    def rng(self, sample_id: str) -> np.random.Generator:
        """A generator fixed by the run seed and the sample id (independent of batching)."""
        return seeded_rng(self.seed, self.name, sample_id)

    @property
    def label(self) -> str:
        """The name plus the parameters that differ from their defaults (leaderboard rows)."""
        changed = {k: v for k, v in self.params.items() if self.default_params().get(k) != v}
        return self.name + ("" if not changed else " " + ",".join(f"{k}={v}" for k, v in sorted(changed.items())))

    def check(self, vlm: VLM) -> None:
        """Called once right after the model is loaded, before any sample: raise an
        :class:`~xbench.errors.XbenchError` naming this method and the value at fault when a
        parameter cannot work on ``vlm`` (a layer index out of range, a hook point the model
        family lacks...). Default: nothing to check."""

    def explain(self, vlm: VLM, generations: Sequence[Generation]) -> list[RelevanceMap]:
        """Return one map per generation, on each generation's ``grid``."""
        raise NotImplementedError


def require_modules(modules: Sequence[str], who: str) -> None:
    """Raise :class:`~xbench.errors.MissingDependencyError` naming ``who``, the missing modules
    and the install command (``pip install 'xbench[<extra>]'`` for xbench's own extras)."""
    import importlib.util

    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            missing.append(module)
    if missing:
        from importlib.metadata import PackageNotFoundError, metadata

        from xbench.errors import MissingDependencyError

        try:
            extras = set(metadata("xbench").get_all("Provides-Extra") or ())
        except PackageNotFoundError:
            extras = set()
        install = " ".join(f"'xbench[{m}]'" if m in extras else m for m in missing)
        raise MissingDependencyError(f"{who} needs {', '.join(missing)}, which is not installed: pip install {install}")


class Task(Parameterised):
    """Base class of task adapters. One subclass per module in ``tasks/``.

    ``samples`` yields :class:`Sample` (or :class:`SampleError` for a sample that
    cannot be built); ``prompt`` gives the question text with the task's instruction,
    which the model adapter wraps in its family's conversation template. Keyword
    arguments after ``split`` and ``data_dir`` are the task's parameters (``--task-param``),
    declared in :attr:`parameters`.
    """

    kind = "task"
    description: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("test",)
    max_new_tokens: ClassVar[int] = 8
    #: direction of each answer metric ``score``/``aggregate`` return (None: no direction)
    answer_metrics: ClassVar[Mapping[str, bool | None]] = {"accuracy": True}
    #: a ``Sample.meta`` key whose values break each score down in :meth:`aggregate` (None: no breakdown)
    breakdown_key: ClassVar[str | None] = None
    #: the ``Sample.meta`` key naming a sample's image: samples sharing one are kept on one side of a
    #: split (FastRM validation); a sample without the key counts as its own image
    image_key: ClassVar[str] = "image_id"

    def __init__(self, split: str | None = None, data_dir: str | Path | None = None, **params: Any) -> None:
        from xbench.errors import ParameterError

        self.split = split or self.splits[0]
        if self.split not in self.splits:
            raise ParameterError(f"task {self.name!r} has no split {self.split!r}; choose from {list(self.splits)}")
        self.data_dir = Path(data_dir) if data_dir else None
        super().__init__(**params)

    def samples(self, limit: int | None = None, seed: int = 0) -> Iterator[Sample | SampleError]:
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        return sample.question

    def score(self, sample: Sample, answer: str) -> dict[str, float]:
        raise NotImplementedError

    def ground_truth_mask(self, sample: Sample) -> np.ndarray | None:
        """Boolean ``H x W`` mask of the evidence on image pixels, or None (default: ``sample.gt_mask``)."""
        return sample.gt_mask

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Run-level answer metrics from the run's successful records (default: mean of each score).

        Each record has ``scores`` (what :meth:`score` returned) and ``meta`` (the sample's meta).
        With :attr:`breakdown_key` set, each score is also averaged per value of that meta key
        as ``"name[value]"``, which takes its direction from ``name`` in :attr:`answer_metrics`.
        """
        sums: dict[str, list[float]] = {}
        groups: dict[str, list[float]] = {}
        for r in records:
            group = r["meta"].get(self.breakdown_key) if self.breakdown_key else None
            for k, v in r["scores"].items():
                if v is not None:
                    sums.setdefault(k, []).append(float(v))
                    if group is not None:
                        groups.setdefault(group_column(k, group), []).append(float(v))
        means = {k: float(np.mean(v)) for k, v in sums.items()}
        means.update({k: float(np.mean(v)) for k, v in sorted(groups.items())})
        return means

    def data_hash(self) -> str | None:
        """A hash identifying the data read (for provenance); None when unknown."""
        return None


@dataclass
class MetricContext:
    """What the runner hands to a metric that declares :attr:`Metric.needs` (one per sample and map).

    * ``vlm``: the model under explanation (:data:`MODEL` in needs): re-forward perturbed
      inputs with ``vlm.forward(generation, pixel_values=batch)``;
    * ``reference``: the reference method's map for the same generation (``"reference"``
      in needs), computed in the same run or read from an earlier run; None when it is
      unavailable, with ``reference_error`` saying why;
    * ``cache``: a dict shared by every metric of one sample (the main map and its control
      map alike), for work that does not depend on the map (e.g. a random-order curve);
    * ``seed``: the run seed; :meth:`rng` gives map-independent randomness;
    * ``control``: the method's map on the ``--control`` model for the same generation
      (``"control"`` in needs); None without a control or when it failed (``control_error``).
    """

    vlm: "VLM | None" = None
    reference: RelevanceMap | None = None
    reference_error: str | None = None
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)
    control: RelevanceMap | None = None
    control_error: str | None = None

    def rng(self, purpose: str, sample_id: str) -> np.random.Generator:
        """A generator fixed by the run seed, ``purpose`` and the sample id (the same for every method)."""
        return seeded_rng(self.seed, purpose, sample_id)


@dataclass(frozen=True)
class Pooled:
    """A per-sample metric value with the counts behind it, for a metric whose run value pools counts
    over samples (an F1 over every patch of every sample) instead of averaging values. The record keeps
    ``value`` as the sample's value and ``counts`` under ``record["counts"][column]``
    (:func:`xbench.records.split_pooled`); :meth:`Metric.aggregate` gets the ``Pooled`` back, rebuilt
    from the record (:func:`xbench.records.recorded_value`)."""

    value: float | None
    counts: Mapping[str, float]


class Metric(Parameterised):
    """A per-sample map metric, summarised per run.

    ``compute(sample, generation, rmap)`` returns a float, or None when it does not apply
    (for example no ground-truth mask). A metric that needs more than the map declares it
    in :attr:`needs` (a subset of :data:`METRIC_NEEDS`, checked when registered); the runner then calls
    ``compute(sample, generation, rmap, context)`` with a :class:`MetricContext`. Metrics
    with empty ``needs`` are called with three arguments, as before.

    :meth:`aggregate` turns the per-sample values into the run's value (default: their
    mean); the runner also bootstraps it over samples for a 95% interval. A metric whose
    run value pools counts over samples returns :class:`Pooled` values from ``compute``.
    Constructor keyword arguments are the metric's parameters (``--metric-param k=v``),
    declared in :attr:`parameters`. ``uses_map = False`` marks a
    control value that ignores the map: the runner does not repeat it for ``--control``
    (nor a metric that needs ``"control"``: it compares the map with the control map).
    ``--metrics`` takes :mod:`xbench.presets` names too: ``all``, the metric's ``category``
    and each name in :attr:`presets`.
    """

    kind = "metric"
    description: ClassVar[str] = ""
    category: ClassVar[str] = ""  # answer | agreement | faithfulness | localisation | confidence | sanity | cost
    higher_is_better: ClassVar[bool | None] = True
    needs: ClassVar[frozenset[str]] = frozenset()  # subset of METRIC_NEEDS
    uses_map: ClassVar[bool] = True
    # presets (``--metrics NAME``) the metric belongs to besides ``all`` and its category's;
    # ``default`` (the run's default set) unless a metric is too costly for a quick run
    presets: ClassVar[frozenset[str]] = frozenset({"default"})
    flag_above: ClassVar[float | None] = None  # the summary and leaderboard flag run values above it

    def compute(
        self, sample: Sample, generation: Generation, rmap: RelevanceMap, context: MetricContext | None = None
    ) -> float | None:
        raise NotImplementedError

    def aggregate(self, values: Sequence[float | None], records: Sequence[Mapping[str, Any]]) -> float | None:
        """The run's value from per-sample ``values`` (None where it did not apply).

        ``records[i]`` is the successful record ``values[i]`` came from (with ``scores``
        and ``meta``), for run-level metrics such as an AUROC over samples. Default: the
        mean of the floats, None if there is none.
        """
        plain = (v.value if isinstance(v, Pooled) else v for v in values)
        floats = [float(v) for v in plain if v is not None]
        return float(np.mean(floats)) if floats else None


