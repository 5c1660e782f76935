"""Model resolution and loading: a zoo name or a local Hugging Face directory -> a VLM adapter.

Nothing here downloads: loading is ``local_files_only`` with the hub offline, and a
missing or incomplete directory is a :class:`~xbench.errors.ModelLoadError` naming
what is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xbench.errors import ModelLoadError, ParameterError, UnknownNameError
from xbench.registry import Registries

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_FULL_HASH_LIMIT = 512 * 2**20


@dataclass(frozen=True)
class ModelSpec:
    """A named model (``--model NAME``). ``locate()`` returns its local HF directory.

    Either ``shipped`` (a directory inside an installed package) or ``build`` (a
    function writing the model into an empty directory, offline and deterministically;
    the result is cached under ``$XBENCH_HOME/zoo``). ``trainer`` names the module that
    trains it from scratch (``xbench zoo train NAME``: it has ``recipe_from_args`` and
    ``train_and_save``), when xbench can.
    """

    name: str
    description: str
    shipped: Callable[[], Path] | None = None
    build: Callable[[Path], None] | None = None
    version: str = "1"
    trainer: str | None = None

    def locate(self) -> Path:
        if self.shipped is not None:
            return Path(self.shipped())
        if self.build is None:
            raise ModelLoadError(f"model {self.name!r} has neither shipped files nor a builder")
        target = xbench_home() / "zoo" / f"{self.name}-v{self.version}"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            self.build(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another process built it first
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        return target


def xbench_home() -> Path:
    """Where xbench caches built models and labels (``$XBENCH_HOME``, default ~/.cache/xbench)."""
    return Path(os.environ.get("XBENCH_HOME") or Path.home() / ".cache" / "xbench")


def check_model_dir(path: Path) -> dict:
    """Return the parsed config.json of a complete HF model directory, or raise naming what is missing."""
    if not path.exists():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist (xbench never downloads models)")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is not a directory")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    for group in (WEIGHT_FILES, TOKENIZER_FILES, PROCESSOR_FILES):
        if not any((path / f).is_file() for f in group):
            missing.append(" or ".join(group))
    if missing:
        raise ModelLoadError(f"model directory {str(path)!r} is incomplete: missing {'; '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path / 'config.json'} holds a JSON {type(config).__name__}, not an object")
    return config


def config_hash(config: dict) -> str:
    """First 16 hex digits of a sha256 over the canonical JSON of a model's config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def model_hash(path: Path) -> str:
    """sha256 over config.json and the weight files (content, or name+size+ends beyond 512 MiB)."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                if size <= _FULL_HASH_LIMIT:
                    for chunk in iter(lambda: fh.read(2**20), b""):
                        h.update(chunk)
                else:
                    h.update(fh.read(2**20))
                    fh.seek(-(2**20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def resolve_model(name_or_path: str, registries: Registries) -> tuple[str, Path]:
    """``(model_id, directory)`` for a zoo name or a local directory."""
    if name_or_path in registries.models:
        return name_or_path, registries.models.get(name_or_path).locate()
    path = Path(name_or_path).expanduser()
    if path.exists() or os.sep in name_or_path or name_or_path.startswith("."):
        return str(path), path
    raise UnknownNameError(
        registries.models.unknown_message(name_or_path) + " A local model directory in Hugging Face layout also works."
    )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def check_device(device: str) -> str:
    """``device`` if torch knows it and it is present here, else :class:`ParameterError`."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ParameterError(f"device {device!r} is not available here ({count} CUDA devices)")
    return device


def check_torchvision() -> None:
    """Refuse, with the fix, a torchvision that is installed but does not import beside this torch
    (PyPI's CUDA torchvision beside a CPU torch wheel: 'operator torchvision::nms does not exist'):
    transformers then fails on every image processor with an unhelpful message. xbench's adapters
    need no torchvision (transformers' PIL image processors serve every family)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as exc:
        import torch

        raise ModelLoadError(
            f"torchvision is installed but does not import beside torch {torch.__version__} "
            f"({type(exc).__name__}: {exc}); uninstall it (`pip uninstall torchvision`: xbench's image processors do "
            "not need it) or install the torchvision build made for this torch"
        ) from None


def load_vlm(
    name_or_path: str,
    registries: Registries,
    *,
    needs: frozenset[str] = frozenset(),
    device: str | None = None,
    dtype: str | None = None,
):
    """Load a VLM adapter with its identity; eager attention only when :data:`~xbench.api.ATTENTIONS` is in ``needs``."""
    import torch

    from xbench.api import ATTENTIONS, ModelIdentity

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_torchvision()
    model_id, path = resolve_model(name_or_path, registries)
    config = check_model_dir(path)
    model_type = config.get("model_type")
    typed = [e.obj for e in registries.model_families if model_type in e.obj.model_types]
    families = [f for f in typed if f.accepts(config)]
    if typed and not families:
        tower = (config.get("vision_config") or {}).get("model_type")
        raise ModelLoadError(
            f"model {model_id!r} has model_type {model_type!r} with a {tower!r} vision tower, which none of the "
            f"families serving {model_type!r} ({', '.join(f.family for f in typed)}) accepts"
        )
    if not families:
        known = sorted({t for e in registries.model_families for t in e.obj.model_types})
        raise ModelLoadError(
            f"model {model_id!r} has model_type {model_type!r}, which no model family supports (supported: {known})"
        )
    device = check_device(device or default_device())
    dtype = dtype or default_dtype(device)
    if not isinstance(getattr(torch, dtype, None), torch.dtype) or not getattr(torch, dtype).is_floating_point:
        raise ModelLoadError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    identity = ModelIdentity(name=model_id, path=path, config_hash=config_hash(config), model_hash=model_hash(path))
    attn = "eager" if ATTENTIONS in needs else "sdpa"
    return families[0].load(path, identity=identity, device=device, dtype=getattr(torch, dtype), attn_implementation=attn)
