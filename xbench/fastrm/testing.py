"""Random-weight proxies for tests and timing benchmarks (timing does not depend on weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xbench.fastrm.heads import HEADS
from xbench.fastrm.proxy import FastRMProxy
from xbench.fastrm.proxy_store import DEFAULT_HEAD


def llava_dir_identity(model_id: str, path: Path) -> tuple[dict, tuple[int, int]]:
    """The identity :func:`~xbench.fastrm.proxy.model_identity` gives a loaded LLaVA directory,
    and its patch grid, read from the files without loading the model."""
    from xbench.models import config_hash, model_hash

    config = json.loads((Path(path) / "config.json").read_text())
    vision = config["vision_config"]
    side = vision["image_size"] // vision["patch_size"]
    identity = {
        "id": model_id,
        "hidden_size": int(config["text_config"]["hidden_size"]),
        "config_hash": config_hash(config),
        "model_hash": model_hash(Path(path)),
    }
    return identity, (side, side)


def random_proxy(identity: dict, grid: tuple[int, int], head: str = DEFAULT_HEAD, seed: int = 0) -> FastRMProxy:
    """A proxy with seeded random weights for the model ``identity`` describes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proxy = FastRMProxy(head, identity["hidden_size"], grid, model=identity, info={"random_weights": True})
    return proxy.eval().requires_grad_(False)


def install_random_proxies(model_id: str, path: Path, heads=tuple(HEADS.names()), seed: int = 0) -> list[Path]:
    """Install random-weight proxies of ``heads`` as the defaults of the model at ``path``."""
    import tempfile

    from xbench.fastrm.proxy_store import install

    identity, grid = llava_dir_identity(model_id, path)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for head in heads:
            out.append(install(random_proxy(identity, grid, head, seed).save(Path(tmp) / head)))
    return out


def install_random_proxies_for(vlm, heads=tuple(HEADS.names()), seed: int = 0, grid=None) -> list[Path]:
    """Install random-weight proxies of ``heads`` as the defaults of a loaded model (any family), for
    ``grid`` (default: the model's fixed patch grid; a model whose grid varies with the image needs it)."""
    import tempfile

    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.proxy_store import install

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for head in heads:
            proxy = random_proxy(model_identity(vlm), tuple(grid) if grid else _one_grid(vlm), head, seed)
            out.append(install(proxy.save(Path(tmp) / head)))
    return out


def _one_grid(vlm) -> tuple[int, int]:
    """The patch grid of a one-grid model (what the fixed-grid heads need)."""
    grid = getattr(vlm, "patch_grid", None)
    if grid is None:
        raise ValueError(f"model {vlm.name!r} has no fixed patch grid for a fixed-grid FastRM head")
    return tuple(grid)
