"""Shared fixtures: an isolated XBENCH_HOME, the plugin set, tiny models built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def xbench_home(tmp_path_factory) -> Path:
    """Built zoo models and caches go to a per-session folder, never the user's cache."""
    home = Path(os.environ.get("XBENCH_TEST_HOME") or tmp_path_factory.mktemp("xbench-home"))
    os.environ["XBENCH_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def plugins():
    from xbench.plugins import build

    return build()


@pytest.fixture(scope="session")
def tiny_model_dir(plugins) -> Path:
    return plugins.registries.models.get("tiny-random-llava").locate()


@pytest.fixture(scope="session")
def tiny_vlm(plugins, tiny_model_dir):
    """tiny-random-llava with eager attention on CPU (shared: tests must not modify it)."""
    from xbench.models import load_vlm

    return load_vlm("tiny-random-llava", plugins.registries, needs=frozenset({"attentions"}), device="cpu")


@pytest.fixture(scope="session")
def easyvqa_samples(plugins):
    task = plugins.registries.tasks.get("easyvqa")()
    return task, list(task.samples(limit=8, seed=0))


@pytest.fixture(scope="session", autouse=True)
def fastrm_test_proxies(xbench_home, tiny_model_dir):
    """Random-weight FastRM proxies installed as tiny-random-llava's defaults, so that
    ``fastrm`` runs like every other method in generic tests (trained proxies ship only
    for the default model)."""
    from xbench.fastrm.testing import install_random_proxies

    return install_random_proxies("tiny-random-llava", tiny_model_dir)


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script(name)``: the module ``benchmarks/<name>.py`` (scripts, not a package)."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """In-process CLI calls may set torch's thread count (``--threads``); later tests (and the Ray
    workers a sweep test starts, which compare their records with in-process ones bit for bit) must
    not inherit it."""
    import sys

    torch = sys.modules.get("torch")  # never imported here: some tests check what a command imports
    threads = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
