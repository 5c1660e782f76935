"""The FastRM proxy: a head over last-layer hidden states, its files, and its model check.

A proxy directory holds ``proxy.safetensors`` (the weights) and ``proxy.json`` (the head,
its parameters, the patch grid, the decision threshold and the VLM it was trained for:
id, hidden size, config hash, model hash). The grid is the map shape every training sample
had (``(h, w)`` or ``(N,)``), or null when their grids differed (only a head without
position embeddings trains then); a proxy's maps always take each generation's own grid.
Loading checks every file and names the one at fault; :meth:`FastRMProxy.check_compatible`
refuses a model other than the one the proxy was trained for.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from xbench.errors import ParameterError, XbenchError
from xbench.fastrm.heads import HEADS
from xbench.maps import entropy_each

FORMAT = "xbench-fastrm-proxy"
FORMAT_VERSION = 1
WEIGHTS = "proxy.safetensors"
CONFIG = "proxy.json"


class ProxyError(XbenchError):
    """A FastRM proxy that is missing, corrupt, or made for another model."""


def model_identity(vlm) -> dict[str, Any]:
    """What a proxy records about its VLM: id, hidden size, config hash, model hash.

    A randomized control copy (``--control randomized``) has no weights hash of its own; it
    stands for the model named in its ``randomized_from``, so that model's proxy reads the
    random copy's hidden states (the sanity control) instead of being refused.
    """
    origin = getattr(vlm, "randomized_from", None) or {}
    model_hash = getattr(vlm, "model_hash", None) or origin.get("model_hash")
    return {
        "id": getattr(vlm, "name", None),
        "hidden_size": int(vlm.hidden_size),
        "config_hash": getattr(vlm, "config_hash", None),
        "model_hash": model_hash,
    }


def features(generations: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(patches [B, N, d], queries [B, K, d], query_mask [B, K] or None, patch_mask [B, N] or None)``
    from generations' kept states.

    Patches are the image tokens' states, queries the states at the answer tokens' query
    positions, each zero-padded to the longest with a mask (None when every generation has
    the same count). Raises :class:`ProxyError` when the hidden states were not kept.
    """
    patches, queries = [], []
    for gen in generations:
        hs = gen.hidden_states
        if hs is None:
            raise ProxyError(
                f"generation {gen.sample_id!r} has no hidden states: FastRM needs the model adapter "
                "to keep them (method needs {'hidden_states'})"
            )
        patches.append(hs[_index(gen.image_positions)])
        queries.append(hs[_index(gen.query_positions)])
    (patches, patch_mask), (queries, query_mask) = pad_stack(patches), pad_stack(queries)
    return patches, queries, query_mask, patch_mask


def _index(positions: Sequence[int]):
    """A slice when the positions are consecutive (a view, no gather), else the list."""
    if positions and list(positions) == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return list(positions)


def pad_stack(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack ``[L_i, d]`` tensors into ``[B, L, d]``: as they are when every ``L_i`` is the same
    (mask None), else zero-padded with a boolean mask ``[B, L]`` (:func:`pad_queries`)."""
    if len({t.shape[0] for t in tensors}) == 1:
        return torch.stack(list(tensors)), None
    return pad_queries(tensors)


def pad_queries(queries: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[K_i, d]`` states into ``[B, K, d]`` with a boolean mask ``[B, K]`` (always)."""
    k_max = max(q.shape[0] for q in queries)
    out = queries[0].new_zeros(len(queries), k_max, queries[0].shape[-1])
    mask = torch.zeros(len(queries), k_max, dtype=torch.bool, device=out.device)
    for i, q in enumerate(queries):
        out[i, : q.shape[0]] = q
        mask[i, : q.shape[0]] = True
    return out, mask


@contextlib.contextmanager
def single_cpu_thread(device):
    """On CPU, run the block on one intra-op thread (restored after).

    The proxy is a few small matrix products: on a busy machine, waking a second OpenMP
    thread for each of them can cost far more than the work (results/fastrm/README.md, Cost on CPU).
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def entropy_confidence(probs: np.ndarray, patch_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(entropy [n], confidence [n])`` of maps ``[n, N]``: the entropy in nats of each map
    normalised to a distribution over its patches (:func:`xbench.maps.entropy_each` times
    ``log(N)``) and ``confidence = 1 - entropy / log(N)`` (1: all mass on one patch, 0: uniform).
    With ``patch_mask [n, N]`` each map counts only its real patches."""
    probs = np.asarray(probs)
    if patch_mask is None or patch_mask.all():
        normalised = entropy_each(probs)
        return normalised * np.log(probs.shape[-1]), 1.0 - normalised
    normalised = np.array([entropy_each(p[m][None])[0] for p, m in zip(probs, patch_mask)])
    return normalised * np.log(patch_mask.sum(axis=1)), 1.0 - normalised


class FastRMProxy(nn.Module):
    """A head plus its config. ``forward`` gives one logit per patch (mean over answer tokens)."""

    def __init__(
        self,
        head: str,
        hidden_size: int,
        grid: Sequence[int] | None,
        head_params: dict | None = None,
        model: dict | None = None,
        decision_threshold: float = 0.5,
        info: dict | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ProxyError(HEADS.unknown_message(head))
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        n_patches = None if self.grid is None else int(np.prod(self.grid))
        try:
            self.head = HEADS.get(head)(int(hidden_size), n_patches, **(head_params or {}))
        except ParameterError as exc:
            raise ProxyError(f"FastRM {head!r} head: {exc}") from None
        self.head_name = head
        self.hidden_size = int(hidden_size)
        self.model_info = dict(model or {})
        self.decision_threshold = float(decision_threshold)
        self.info = dict(info or {})  # training recipe and metrics, saved with the proxy
        self.source: str | None = None  # the directory it was loaded from

    # ------------------------------------------------------------------ prediction
    def token_logits(self, patches, queries, patch_mask=None) -> torch.Tensor:
        """Logits ``[B, K, N]`` per answer token (differentiable: training and scoring)."""
        return self.head(patches, queries, patch_mask)

    def forward(self, patches, queries, query_mask=None, patch_mask=None) -> torch.Tensor:
        """Per-patch logits ``[B, N]``: the per-token logits averaged over each sample's answer
        tokens (0 at padded patches)."""
        return self.combine(self.token_logits(patches, queries, patch_mask), query_mask)

    @staticmethod
    def combine(token_logits: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of ``[B, K, N]`` token logits over each sample's real answer tokens -> ``[B, N]``."""
        if query_mask is None:
            return token_logits.mean(dim=1)
        w = query_mask.to(token_logits.dtype).unsqueeze(-1)
        return (token_logits * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def predict(self, generations: Sequence) -> dict[str, Any]:
        """Maps for generations: ``map`` (sigmoid probabilities, ``[B, *grid]``), ``per_token``
        (``[B, K, *grid]``, K: the longest answer), ``entropy [B]``, ``confidence [B]``. When the
        generations' grids differ, ``map`` and ``per_token`` are lists, one array per generation
        on its own grid.

        Kept lean (it is the whole cost of a FastRM map): one conversion to numpy, the
        sigmoid and entropy in numpy.
        """
        param = self.head.bias
        with torch.inference_mode(), single_cpu_thread(param.device):
            patches, queries, mask, patch_mask = features(generations)
            self.check_states(patches, generations)
            if patches.dtype != param.dtype or patches.device != param.device:
                patches, queries = patches.to(param), queries.to(param)
                mask = None if mask is None else mask.to(param.device)
                patch_mask = None if patch_mask is None else patch_mask.to(param.device)
            token_logits = self.head.infer(patches, queries, patch_mask)
            if token_logits.shape[1] == 1:  # one answer token: its map is the map
                both = token_logits.float().cpu().numpy()
            else:
                both = (
                    torch.cat([self.combine(token_logits, mask).unsqueeze(1), token_logits], dim=1)
                    .float()
                    .cpu()
                    .numpy()
                )
        probs = 1.0 / (1.0 + np.exp(-both))
        pm = None if patch_mask is None else patch_mask.cpu().numpy()
        entropy, confidence = entropy_confidence(probs[:, 0], pm)
        per_token = probs if probs.shape[1] == 1 else probs[:, 1:]
        grids = [tuple(g.grid) for g in generations]
        if pm is None and len(set(grids)) == 1:
            maps = probs[:, 0].reshape(len(generations), *grids[0])
            per_token = per_token.reshape(len(generations), -1, *grids[0])
        else:
            n = [int(np.prod(g)) for g in grids]
            maps = [probs[i, 0, : n[i]].reshape(g) for i, g in enumerate(grids)]
            per_token = [per_token[i, :, : n[i]].reshape(-1, *g) for i, g in enumerate(grids)]
        return {"map": maps, "per_token": per_token, "entropy": entropy, "confidence": confidence}

    # ------------------------------------------------------------------ checks
    def check_states(self, patches: torch.Tensor, generations: Sequence = ()) -> None:
        """The states must have the proxy's hidden size; a head with position embeddings reads
        only its own grid (a :class:`~xbench.errors.ParameterError` otherwise)."""
        if patches.shape[-1] != self.hidden_size:
            raise ProxyError(
                f"FastRM proxy for model {self.model_info.get('id')!r} expects hidden size {self.hidden_size}, "
                f"but the model's hidden states have size {patches.shape[-1]}"
            )
        if self.head.positional:
            other = sorted({tuple(g.grid) for g in generations} - {self.grid})
            if other:
                raise ParameterError(
                    f"FastRM {self.head_name!r} proxy has position embeddings for the {self.grid} grid it was "
                    f"trained on; generation(s) have grid(s) {other[:3]}. Train a proxy for this layout, or use "
                    "the attention head with pos=false, which reads any grid"
                )

    def check_compatible(self, vlm, where: str = "") -> None:
        """Raise :class:`ProxyError` unless ``vlm`` is the model this proxy was trained for, or the
        randomized control copy of it (same architecture, random weights: ``vlm.randomized_from``
        names the model it was made from: see :func:`model_identity`)."""
        ident = model_identity(vlm)
        src = f" {where}" if where else ""
        if ident["hidden_size"] != self.hidden_size:
            raise ProxyError(
                f"FastRM proxy{src} was trained for model {self.model_info.get('id')!r} with hidden size "
                f"{self.hidden_size}; model {ident['id']!r} has hidden size {ident['hidden_size']}. "
                f"{train_hint(ident['id'])}"
            )
        want = self.model_info.get("model_hash")
        if want != ident["model_hash"]:
            raise ProxyError(
                f"FastRM proxy{src} was trained for model {self.model_info.get('id')!r} (model hash {want}), "
                f"not for model {ident['id']!r} (model hash {ident['model_hash']}). {train_hint(ident['id'])}"
            )

    # ------------------------------------------------------------------ files
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "head": self.head_name,
            "head_params": self.head.params,
            "hidden_size": self.hidden_size,
            "grid": None if self.grid is None else list(self.grid),
            "decision_threshold": self.decision_threshold,
            "model": self.model_info,
            "info": self.info,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``proxy.safetensors`` and ``proxy.json`` into ``out_dir``; return it."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "head": self.head_name})
        (out / CONFIG).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "FastRMProxy":
        """Read a proxy directory; every problem is a :class:`ProxyError` naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if not path.is_dir():
            raise ProxyError(
                f"FastRM proxy directory {str(path)!r} does not exist (train one with `xbench fastrm train`)"
            )
        for name in (CONFIG, WEIGHTS):
            if not (path / name).is_file():
                raise ProxyError(f"FastRM proxy directory {str(path)!r} has no {name}")
        try:
            cfg = json.loads((path / CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise ProxyError(f"cannot read FastRM proxy config {path / CONFIG}: {exc}") from None
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise ProxyError(f"{path / CONFIG} is not a FastRM proxy config (format {FORMAT!r} expected)")
        missing = [k for k in ("head", "hidden_size", "grid", "model") if k not in cfg]
        if missing:
            raise ProxyError(f"FastRM proxy config {path / CONFIG} lacks {missing}")
        if cfg["head"] not in HEADS:
            raise ProxyError(f"FastRM proxy config {path / CONFIG}: {HEADS.unknown_message(cfg['head'])}")
        try:
            proxy = cls(
                cfg["head"],
                cfg["hidden_size"],
                cfg["grid"],
                cfg.get("head_params"),
                cfg["model"],
                cfg.get("decision_threshold", 0.5),
                cfg.get("info"),
            )
        except (TypeError, ValueError) as exc:
            raise ProxyError(f"FastRM proxy config {path / CONFIG} is invalid: {exc}") from None
        try:
            state = load_file(str(path / WEIGHTS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ProxyError(f"cannot read FastRM proxy weights {path / WEIGHTS}: {exc}") from None
        try:
            proxy.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ProxyError(
                f"FastRM proxy weights {path / WEIGHTS} do not fit its config ({cfg['head']} head, hidden size "
                f"{cfg['hidden_size']}): {' '.join(s.strip() for s in first[:3])}"
            ) from None
        proxy.source = str(path)
        return proxy.eval().requires_grad_(False)


def train_hint(model_id: str | None) -> str:
    model = model_id or "MODEL"
    return (
        f"Train one with `xbench fastrm train --model {model} --out DIR` and pass `--param proxy=DIR` "
        f"(add --install to make it this model's default)."
    )
