"""The model contract: what a model-family adapter provides, returns and is.

Methods, metrics, companions and the runner use a model only through :class:`VLM`'s
declared members (a meta-test runs every built-in method on a wrapper exposing nothing
else). Everything that depends on a family's layout (its Hugging Face attribute names,
where the image tokens sit, how pixels map to grid cells, which vision layers feed the
language model) lives in the family's adapter module in ``xbench/models/``.

A new family is one adapter module: a :class:`VLM` subclass implementing the members
below (the hook points a method uses are optional: the default refuses with a
:class:`~xbench.errors.ModelCapabilityError` naming the family) and a
``xbench_register_model_families`` hookimpl registering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Mapping, Sequence

from xbench.errors import ModelCapabilityError, ParameterError
from xbench.image_layout import ImageLayout

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np
    import torch

    from xbench.api import Sample


@dataclass
class Generation:
    """What a VLM adapter returns for one sample.

    * ``prompt_ids``: the unpadded prompt token ids (image placeholders expanded);
    * ``answer_ids``: generated ids up to (excluding) end-of-sequence; when the model
      ends at once this holds that single end token, so there is always a target;
    * ``image_positions``: indices into ``prompt_ids`` of the image tokens, in the cell order of
      ``layout`` (:class:`~xbench.image_layout.ImageLayout`: its grids and the box of the
      original image each cell covers); every map of this generation has shape ``grid``
      (``layout.map_shape``);
    * ``pixel_values``: the processed image for re-forwards, in the adapter's layout with a
      leading batch dimension of 1 (pixel maps, perturbations and masks go through
      :meth:`VLM.pixel_cells`, :meth:`VLM.pixels_to_grid`, :meth:`VLM.perturb` and
      :meth:`VLM.mask_to_grid`);
    * ``image_inputs``: the adapter's own other per-image inputs for re-forwards (image sizes,
      patch grids...); only the adapter reads them;
    * ``hidden_states``: last-layer hidden states ``[len(prompt_ids) + len(answer_ids) - 1, d]``
      computed during generation, kept only when the method needs them.

    The query position of answer token ``k`` (the position whose logits produced it)
    is ``prompt_len - 1 + k``.
    """

    sample_id: str
    text: str
    prompt_ids: list[int]
    answer_ids: list[int]
    image_positions: list[int]
    layout: ImageLayout
    pixel_values: Any = None
    hidden_states: Any = None
    image_inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, ...]:
        """The shape of this generation's maps: ``(h, w)`` for one grid, ``(N,)`` for several."""
        return self.layout.map_shape

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def query_positions(self) -> list[int]:
        """Positions whose outputs predicted each answer token."""
        return [self.prompt_len - 1 + k for k in range(len(self.answer_ids))]


@dataclass
class ForwardOutput:
    """What :meth:`VLM.forward` returns (never a framework's own output object).

    * ``logits``: ``[B, K, vocab]`` for the last ``K`` positions (``K = logits_to_keep``; all
      positions without it);
    * ``attentions``: with ``output_attentions``, one ``[B, heads, T, T]`` tensor per
      language-model layer, first to last; else None;
    * ``vision_attentions``: with ``output_attentions``, one ``[C, heads, n, n]`` tensor per
      vision-tower layer, first to last, for a forward of one generation whose image the tower
      reads as ``C`` crops (tiles) of ``n`` tokens each (None when the family exposes no such
      attentions); vision token ``c * n + j`` is token ``j`` of crop ``c``, the index space of
      ``VLM.vision_token_positions``.
    """

    logits: Any
    attentions: tuple | None = None
    vision_attentions: tuple | None = None


@dataclass(frozen=True)
class ModelIdentity:
    """Who a loaded model is, fixed when the adapter is built.

    ``name``: the zoo name or directory given; ``path``: its directory (None for a model
    only in memory); ``config_hash`` / ``model_hash``: see :mod:`xbench.models` (no model
    hash for weights that exist only in memory); ``randomized_from``: for a randomized
    control, ``{"model", "model_hash", "seed"}`` of the model it copies the architecture of.
    """

    name: str
    path: Path | None = None
    config_hash: str | None = None
    model_hash: str | None = None
    randomized_from: Mapping[str, Any] | None = None

    def randomized(self, seed: int) -> "ModelIdentity":
        """The identity of a same-architecture copy with weights drawn from ``seed``."""
        return ModelIdentity(
            name=f"{self.name}[randomized seed={seed}]",
            config_hash=self.config_hash,
            randomized_from={"model": self.name, "model_hash": self.model_hash, "seed": seed},
        )


class VLM:
    """A loaded vision-language model, as every plugin sees it (one subclass per family).

    Class attributes: ``family`` (the registry name), ``description``, ``model_types``
    (the ``config.json`` ``model_type`` values it loads). Instances are built by
    :meth:`load` with their :class:`ModelIdentity`, device, dtype and attention
    implementation, and never change identity afterwards.
    """

    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    identity: ModelIdentity
    device: Any
    dtype: Any
    attn_implementation: str

    def __init__(self, identity: ModelIdentity, device: Any, dtype: Any, attn_implementation: str) -> None:
        self.identity = identity
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation

    @classmethod
    def accepts(cls, config: Mapping[str, Any]) -> bool:
        """Whether this family serves a checkpoint whose ``config.json`` is ``config`` (its
        ``model_type`` is already one of :attr:`model_types`); families sharing a model_type
        (LLaVA with a Pixtral tower) tell theirs apart here."""
        return True

    @classmethod
    def load(cls, path: Path, *, identity: ModelIdentity, device: str, dtype: Any, attn_implementation: str) -> "VLM":
        """The adapter over the Hugging Face directory ``path``; bad files are a ``ModelLoadError``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def path(self) -> Path | None:
        return self.identity.path

    @property
    def config_hash(self) -> str | None:
        return self.identity.config_hash

    @property
    def model_hash(self) -> str | None:
        return self.identity.model_hash

    @property
    def randomized_from(self) -> Mapping[str, Any] | None:
        return self.identity.randomized_from

    # ---------------------------------------------------------------- generation and re-forwards
    def generate(
        self, samples: Sequence["Sample"], prompts: Sequence[str], max_new_tokens: int, keep: frozenset[str] = frozenset()
    ) -> list[Generation]:
        """Greedy answers, one :class:`Generation` per sample; ``HIDDEN_STATES`` in ``keep`` keeps
        the last hidden states. A prompt that does not fit the context window with
        ``max_new_tokens`` is a :class:`~xbench.errors.PromptTooLongError` naming the sample."""
        raise NotImplementedError

    def forward(
        self, generation: Generation, *, pixel_values: Any = None, output_attentions: bool = False,
        logits_to_keep: int | None = None,
    ) -> ForwardOutput:
        """Teacher-forced forward over prompt + answer of ``generation``.

        ``pixel_values`` (a batch ``[B, ...]`` in the generation's pixel layout) replaces the
        generation's image; with ``output_attentions`` the attentions are checked present
        (an :class:`~xbench.errors.AttentionsUnavailableError` otherwise)."""
        raise NotImplementedError

    def last_hidden_states(self, generation: Generation) -> Any:
        """Teacher-forced last-layer hidden states ``[len(prompt) + len(answer) - 1, d]``, as
        :meth:`generate` keeps them (used to give a control model's states to a method)."""
        raise self._cannot("return hidden states")

    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the last hidden states."""
        raise self._cannot("report its hidden size")

    @property
    def num_layers(self) -> int:
        """Number of language-model layers (the length of ``ForwardOutput.attentions``)."""
        raise self._cannot("report its number of layers")

    # ---------------------------------------------------------------- controls
    def attention(self, implementation: str) -> ContextManager["VLM"]:
        """Context manager: calls inside the block use attention ``implementation`` ("eager", "sdpa"),
        restored on exit (lets a companion method that needs attention weights run on a model
        loaded for a method that does not). Default: only the implementation already in use."""
        import contextlib

        if self.attn_implementation != implementation:
            raise self._cannot(f"switch attention to {implementation!r}")
        return contextlib.nullcontext(self)

    def randomized(self, seed: int) -> "VLM":
        """A new adapter on the same architecture and config with freshly, seeded, randomly
        initialised weights and identity ``self.identity.randomized(seed)`` (``--control randomized``)."""
        raise self._cannot("build a randomized control")

    # ---------------------------------------------------------------- hook points for methods
    def image_features_as_leaf(self) -> ContextManager[None]:
        """Context manager: inside it, the image features entering the language model (the
        projector's output) are detached and made a leaf that requires grad, so gradients
        stop there and the vision tower runs without autograd bookkeeping."""
        raise self._cannot("make its image features a gradient leaf")

    def vision_layers_read(self) -> int:
        """How many vision-tower layers (first to last) feed the features the language model
        reads: a prefix of ``ForwardOutput.vision_attentions``. A ``ModelCapabilityError``
        when the features do not follow one path through the tower."""
        raise self._cannot("follow its image features into a vision tower")

    def vision_token_positions(self, generation: Generation) -> list[list[int]]:
        """For each image token of ``generation`` (cell order), the vision-tower tokens it is made
        of (one for LLaVA; the patches merged or pooled into it for Qwen2-VL, Gemma 3, SmolVLM),
        as indices into the crop-major token space of ``ForwardOutput.vision_attentions``."""
        raise self._cannot("map its image tokens to vision-tower tokens")

    def patch_features(self) -> tuple["torch.nn.Module", Any]:
        """``(module, view)`` for Grad-CAM: a vision-tower module whose output holds one feature
        vector per vision patch, and ``view(output, generation) -> [D, P]`` those features for
        the ``P`` patches of ``generation`` (the cell of each patch: :meth:`patch_cells`)."""
        raise self._cannot("expose per-patch vision features")

    def patch_cells(self, generation: Generation) -> "torch.Tensor":
        """``[P]`` long: the layout cell of each patch of :meth:`patch_features` (-1: none)."""
        raise self._cannot("map its vision patches to cells")

    # ---------------------------------------------------------------- pixel layout
    def pixel_cells(self, generation: Generation) -> "torch.Tensor":
        """Long tensor with as many dims as ``generation.pixel_values`` (leading dim 1), broadcastable
        to it: the layout cell each element feeds, -1 where it feeds none (padding). The one
        pixel-layout primitive an adapter provides; pooling and perturbation derive from it."""
        raise self._cannot("map pixels to cells")

    def pixels_to_grid(self, attribution: "torch.Tensor", generation: Generation) -> "np.ndarray":
        """A per-element map shaped like ``generation.pixel_values`` (any leading batch) summed
        over every element feeding each cell: float32 of shape ``generation.grid``."""
        import numpy as np
        import torch

        a = attribution.detach().float()
        a = a.reshape(-1, *a.shape[1:]).sum(dim=0, keepdim=True)
        cells = self.pixel_cells(generation).to(a.device).expand_as(a).reshape(-1)
        values = a.reshape(-1)
        keep = cells >= 0
        n = generation.layout.n_cells
        sums = torch.zeros(n, dtype=torch.float64, device=a.device).index_add_(0, cells[keep], values[keep].double())
        return sums.cpu().numpy().astype(np.float32).reshape(generation.grid)

    #: the dim of ``pixel_values`` holding colour channels (None: no separate channel dim), for
    #: the per-channel ``"mean"`` fill; an adapter whose layout mixes them overrides :meth:`fill_value`
    pixel_channel_dim: ClassVar[int | None] = 1

    def fill_value(self, generation: Generation, fill: str) -> "torch.Tensor":
        """The fill of perturbations, broadcastable to ``pixel_values``: ``"mean"`` the per-channel
        mean of the processed image over the elements feeding a cell, ``"zero"`` zero in the
        normalised space (the dataset mean colour)."""
        import torch

        pv = generation.pixel_values
        if fill == "zero":
            return pv.new_zeros(())
        if fill != "mean":
            raise ParameterError(f"unknown fill {fill!r} (mean or zero)")
        used = (self.pixel_cells(generation).to(pv.device) >= 0).expand_as(pv).to(pv.dtype)
        dim = self.pixel_channel_dim
        axes = tuple(d for d in range(pv.ndim) if d != dim)
        total = (pv * used).sum(dim=axes, keepdim=True)
        return total / used.sum(dim=axes, keepdim=True).clamp(min=1)

    def perturb(self, generation: Generation, keep: "torch.Tensor", fill: "torch.Tensor | float") -> "torch.Tensor":
        """``[B, ...]`` images: copy ``b`` keeps cell ``c`` with weight ``keep[b, c]`` in [0, 1] and
        shows ``fill`` (a float or a tensor broadcastable to ``pixel_values``) with the rest;
        elements feeding no cell are unchanged."""
        import torch

        pv = generation.pixel_values
        cells = self.pixel_cells(generation).to(pv.device)
        keep = torch.as_tensor(keep, device=pv.device).to(pv.dtype)
        padded = torch.cat([keep, keep.new_ones(len(keep), 1)], dim=1)  # index -1: untouched
        weight = padded[:, cells.clamp(min=-1).reshape(-1)].reshape(len(keep), *cells.shape[1:])
        fill = torch.as_tensor(fill, device=pv.device, dtype=pv.dtype)
        return weight * pv + (1 - weight) * fill

    def mask_to_grid(self, mask: "np.ndarray", generation: Generation) -> "np.ndarray":
        """Fraction of each cell's box covered by a boolean mask on the original image's pixels
        (``H x W``): float32 of shape ``generation.grid`` (``generation.layout.cover``)."""
        return generation.layout.cover(mask)

    # ---------------------------------------------------------------- prompts
    def render_prompt(self, instruction: str) -> str:
        """The prompt for one image and ``instruction``, as the checkpoint formats it (its chat
        template); refused at load when the format cannot be determined."""
        raise self._cannot("render a prompt")

    @property
    def prompt_format(self) -> str:
        """The rendered prompt with ``{prompt}`` where the instruction goes (recorded in summaries)."""
        return self.render_prompt("{prompt}")

    @property
    def image_std(self) -> tuple[float, ...] | None:
        """Per-channel standard deviation that normalised ``pixel_values`` (None: not normalised)."""
        return None

    def _cannot(self, what: str) -> ModelCapabilityError:
        return ModelCapabilityError(f"model family {self.family!r} (model {self.name!r}) cannot {what}")
