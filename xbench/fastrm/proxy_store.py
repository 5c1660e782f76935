"""Where FastRM finds a model's default proxy.

Two places, searched in order, each holding proxy directories (``proxy.json`` +
``proxy.safetensors``): proxies installed by the user (``$XBENCH_HOME/fastrm/proxies``,
written by ``xbench fastrm train --install`` or ``xbench fastrm install``), then the
proxies shipped in the package (``xbench/fastrm/data/proxies``, read with
importlib.resources). A proxy matches a model when its recorded model hash equals the
model's and its head is the one asked for.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Iterator

from xbench.fastrm.proxy import CONFIG, WEIGHTS, FastRMProxy, ProxyError, model_identity, train_hint
from xbench.models import xbench_home

DEFAULT_HEAD = "attention"


def installed_root() -> Path:
    return xbench_home() / "fastrm" / "proxies"


def shipped_root() -> Path:
    return Path(str(resources.files("xbench.fastrm") / "data" / "proxies"))


def candidates() -> Iterator[tuple[str, Path, dict]]:
    """``(origin, directory, config)`` of every readable proxy, installed ones first."""
    for origin, root in (("installed", installed_root()), ("shipped", shipped_root())):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            try:
                cfg = json.loads((d / CONFIG).read_text())
            except (OSError, ValueError):
                continue
            yield origin, d, cfg


def find_proxy(vlm, head: str = DEFAULT_HEAD) -> Path:
    """The directory of the default ``head`` proxy for ``vlm``, or a :class:`ProxyError` saying how to get one."""
    ident = model_identity(vlm)
    others = []
    for origin, d, cfg in candidates():
        model = cfg.get("model", {})
        if model.get("model_hash") == ident["model_hash"] and cfg.get("head") == head:
            return d
        others.append(f"{model.get('id')} ({cfg.get('head')} head, {origin}, model hash {model.get('model_hash')})")
    known = "; ".join(others) if others else "none"
    raise ProxyError(
        f"no FastRM {head!r} proxy for model {ident['id']!r} (model hash {ident['model_hash']}); "
        f"proxies available: {known}. {train_hint(ident['id'])}"
    )


def install(proxy_dir: str | Path) -> Path:
    """Copy a proxy directory into the installed proxies (after checking it loads); return the copy."""
    proxy = FastRMProxy.load(proxy_dir)
    model_hash = proxy.model_info.get("model_hash")
    if not model_hash:
        raise ProxyError(f"FastRM proxy {proxy_dir} names no model hash, so it cannot be a model's default")
    target = installed_root() / f"{model_hash}-{proxy.head_name}"
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, WEIGHTS):
        shutil.copyfile(Path(proxy_dir) / name, target / name)
    return target
