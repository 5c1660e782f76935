"""What the Captum-based methods share: the forward function and its target, seeding, and
the pooling of pixel attributions onto the patch grid. Not a plugin itself.

* Forward function: ``f(pixel_values [B, C, H, W]) -> [B]``, a teacher-forced
  ``vlm.forward(generation, pixel_values=...)`` over prompt + answer (no generation
  cache, so the image is never dropped between steps, the trap of Captum's
  ``LLMAttribution`` with cached outputs).
* Target (``target`` parameter): ``first`` — the log-probability of the generated
  answer's first token (default); ``answer`` — the sum of the log-probabilities of all
  answer tokens (the answer's log-likelihood).
* Pooling (``pool`` parameter of the pixel methods): a pixel attribution (shaped like the
  generation's ``pixel_values``) becomes the patch map by summing over the channels and over
  the pixels of each grid cell (``vlm.pixels_to_grid``: the adapter knows the layout) either
  the absolute attribution (``abs``, default: how much a
  patch matters, whichever way) or the signed one (``signed``: evidence for the answer minus
  evidence against it, which can cancel within a patch). Saliency and SmoothGrad take the
  gradient's absolute value themselves under ``abs`` (SmoothGrad: the mean of |gradient|
  over the noise draws), not under ``signed``. Layer methods whose output is already on the
  grid have no ``pool``.
* Perturbation methods (occlusion, feature ablation) attribute to the cells themselves: Captum
  perturbs a presence weight per cell (1: shown, baseline 0: replaced by the constant
  ``baseline`` image value) and ``vlm.perturb`` turns it into an image
  (:func:`cells_logprob_fn`), so no method assumes how cells tile the pixels.
* Randomness (noise, baseline draws) is seeded per sample from :meth:`Method.rng`, so a
  sample's map does not depend on the batch it came in.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, ClassVar

import numpy as np
import torch

from xbench.api import GRADIENTS, Generation, Method, RelevanceMap
from xbench.params import Param

TARGETS = ("first", "answer")
POOLS = ("abs", "signed")
TARGET = Param("first", choices=TARGETS, doc="first: the answer's first token's log-probability; answer: the whole answer's")
POOL = Param("abs", choices=POOLS, doc="abs: sum |attribution| per patch; signed: the signed sum")
BASELINE = Param(0.0, doc="the constant image value in the processor's normalised pixel space")


def count(default: int, doc: str) -> Param:
    """A positive integer parameter (steps, samples, batch sizes)."""
    return Param(default, min=1, doc=doc)


def answer_logprob_fn(vlm, generation: Generation, target: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(pixel_values) -> [B]`` log-probability of the answer's first token (``target="first"``)
    or whole answer (``"answer"``)."""
    n = 1 if target == "first" else len(generation.answer_ids)
    gen = replace(generation, answer_ids=generation.answer_ids[:n])
    answer = torch.tensor(gen.answer_ids, device=vlm.device)

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        out = vlm.forward(gen, pixel_values=pixel_values.to(vlm.dtype), logits_to_keep=n + 1)
        logp = out.logits[:, :n].float().log_softmax(dim=-1)  # row k: query position of answer token k
        picked = logp.gather(-1, answer.expand(len(logp), n).unsqueeze(-1)).squeeze(-1)
        return picked.sum(dim=-1)

    return forward


def cells_logprob_fn(vlm, generation: Generation, target: str, fill: float) -> Callable[..., torch.Tensor]:
    """``f(*presence) -> [B]``: the answer log-probability (``target`` as in :func:`answer_logprob_fn`)
    when each cell is shown with weight ``presence`` in [0, 1] and the constant ``fill`` (normalised
    pixel space) covers the rest (``vlm.perturb``). ``presence`` is one ``[B, h, w]`` tensor per grid
    of the layout (or one ``[B, N]``), in cell order."""
    logprob = answer_logprob_fn(vlm, generation, target)

    def forward(*presence: torch.Tensor) -> torch.Tensor:
        keep = torch.cat([p.reshape(len(p), -1) for p in presence], dim=1)
        return logprob(vlm.perturb(generation, keep, fill))

    return forward


def pool_to_grid(vlm, attribution: torch.Tensor, generation: Generation, pool: str = "abs") -> np.ndarray:
    """Sum of the attribution (``abs``: its absolute value; ``signed``: itself) over channels and
    each grid cell's pixels (``vlm.pixels_to_grid``): float32 ``[h, w]`` (``pool`` one of :data:`POOLS`)."""
    a = attribution.detach().float()
    return vlm.pixels_to_grid(a.abs() if pool == "abs" else a, generation)


@contextlib.contextmanager
def seeded(seed: int, device):
    """The global generators Captum draws from (torch CPU, the CUDA device's, numpy's) fixed to
    ``seed`` inside the block and restored after it."""
    devices = [torch.device(device)] if str(device).startswith("cuda") else []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)


class CaptumMethod(Method):
    """A method computed by one Captum attribution algorithm.

    Pixel methods implement :meth:`attribute` (``forward, pixel_values, generation, vlm ->`` an
    attribution shaped like ``pixel_values``, pooled onto the cells by ``pool``); cell methods
    (``on_cells = True``) implement :meth:`attribute_cells` (``vlm, generation ->`` a map of shape
    ``generation.grid``, to which ``pool`` applies ``abs`` or nothing). Each declares its parameters
    over :data:`TARGET` and :data:`POOL` (:attr:`parameters`).
    """

    needs = frozenset({GRADIENTS})
    requires = ("captum",)
    on_cells: ClassVar[bool] = False
    parameters = {"target": TARGET, "pool": POOL}

    def attribute(self, forward, pixel_values: torch.Tensor, generation: Generation, vlm) -> torch.Tensor:
        raise NotImplementedError

    def attribute_cells(self, vlm, generation: Generation) -> torch.Tensor:
        raise NotImplementedError

    def explain(self, vlm, generations):
        maps = []
        for gen in generations:
            seed = int(self.rng(gen.sample_id).integers(2**62))
            with torch.enable_grad(), seeded(seed, vlm.device):
                if self.on_cells:
                    cells = self.attribute_cells(vlm, gen).detach().float()
                    grid = (cells.abs() if self.params.get("pool", "signed") == "abs" else cells).cpu().numpy()
                else:
                    forward = answer_logprob_fn(vlm, gen, self.params["target"])
                    pixel_values = gen.pixel_values.detach().clone().requires_grad_(True)
                    grid = pool_to_grid(vlm, self.attribute(forward, pixel_values, gen, vlm), gen, self.params["pool"])
            maps.append(RelevanceMap(np.asarray(grid, dtype=np.float32)))
        return maps
