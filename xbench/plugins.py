"""Build the plugin manager and fill the registries.

Built-ins are the modules in :data:`BUILTIN_PLUGINS`, registered through the same hooks
as outside plugins; outside plugins are the entry points of the group ``xbench``.
"""

from __future__ import annotations

import importlib
import sys
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

from xbench import hookspecs
from xbench.errors import PluginLoadError
from xbench.registry import Registries

ENTRY_POINT_GROUP = "xbench"

#: Every built-in plugin module, registered exactly like an outside plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "xbench.models.llava",
    "xbench.models.llava_next",
    "xbench.models.llava_onevision",
    "xbench.models.idefics3",
    "xbench.models.qwen2_vl",
    "xbench.models.paligemma",
    "xbench.models.gemma3",
    "xbench.zoo",
    "xbench.zoo.llava_next",
    "xbench.zoo.idefics3",
    "xbench.zoo.qwen2_vl",
    "xbench.zoo.gemma",
    "xbench.metrics.localisation",
    "xbench.metrics.agreement",
    "xbench.metrics.faithfulness",
    "xbench.metrics.confidence",
    "xbench.metrics.sanity",
    "xbench.methods.raw_attention",
    "xbench.methods.rollout",
    "xbench.methods.gradient_relevancy",
    "xbench.methods.saliency",
    "xbench.methods.input_x_gradient",
    "xbench.methods.integrated_gradients",
    "xbench.methods.gradient_shap",
    "xbench.methods.smoothgrad",
    "xbench.methods.occlusion",
    "xbench.methods.feature_ablation",
    "xbench.methods.layer_gradcam",
    "xbench.methods.random_map",
    "xbench.methods.uniform",
    "xbench.methods.fastrm",
    "xbench.tasks.easyvqa",
    "xbench.tasks.vqa_v2",
    "xbench.tasks.gqa",
    "xbench.tasks.pope",
)

#: registration hook name -> attribute of :class:`Registries`
REGISTRATION_HOOKS = {
    "xbench_register_methods": "methods",
    "xbench_register_tasks": "tasks",
    "xbench_register_metrics": "metrics",
    "xbench_register_models": "models",
    "xbench_register_model_families": "model_families",
}


class XbenchPlugins:
    """The plugin manager together with the registries it filled."""

    def __init__(self, pm: pluggy.PluginManager, registries: Registries, broken: dict[str, str]) -> None:
        self.pm = pm
        self.registries = registries
        self.broken = broken  # plugin name -> error message
        self.hook = pm.hook


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("xbench")
    pm.add_hookspecs(hookspecs)
    return pm


def _origin(plugin_name: str, dists: dict[str, str]) -> str:
    if plugin_name in dists:
        return f"plugin {plugin_name!r} ({dists[plugin_name]})"
    if plugin_name.startswith("xbench."):
        return f"built-in {plugin_name!r}"
    return f"plugin {plugin_name!r}"


def load_outside_plugins(pm: pluggy.PluginManager, broken: dict[str, str], dists: dict[str, str]) -> None:
    """Register entry points of group ``xbench``; a failing one is reported by name in ``broken``.

    ``dists`` receives plugin name -> "distribution version" for the origin shown by ``xbench plugins``.
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # an outside plugin may fail in any way
            broken[ep.name] = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            continue
        if ep.dist is not None:
            dists[ep.name] = f"{ep.dist.metadata['Name']} {ep.dist.version}"


def fill_registries(
    pm: pluggy.PluginManager, registries: Registries, broken: dict[str, str], dists: dict[str, str]
) -> None:
    """Call each registration hook once per plugin, so every entry knows its origin."""
    for hook_name, attr in REGISTRATION_HOOKS.items():
        registry = getattr(registries, attr)
        caller = getattr(pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # registration order
            if impl.plugin_name in broken:
                continue
            registry.origin = _origin(impl.plugin_name, dists)
            try:
                impl.function(registry=registry)
            except PluginLoadError:
                raise
            except Exception as exc:
                if impl.plugin_name.startswith("xbench."):
                    raise  # a bug in xbench itself: let it show
                broken[impl.plugin_name] = (
                    f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                )
    notes = list(broken.values())
    for attr in REGISTRATION_HOOKS.values():
        getattr(registries, attr).notes = notes


def build(extra_plugins: tuple[object, ...] = (), load_entry_points: bool = True) -> XbenchPlugins:
    """A fresh plugin manager with built-ins, entry points and ``extra_plugins`` registered."""
    pm = new_plugin_manager()
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    broken: dict[str, str] = {}
    dists: dict[str, str] = {}
    if load_entry_points:
        load_outside_plugins(pm, broken, dists)
    for plugin in extra_plugins:
        pm.register(plugin)
    registries = Registries.empty()
    fill_registries(pm, registries, broken, dists)
    for msg in broken.values():
        print(f"xbench: warning: {msg}", file=sys.stderr)
    return XbenchPlugins(pm, registries, broken)


@lru_cache(maxsize=1)
def default() -> XbenchPlugins:
    """The process-wide plugin set (built-ins + installed entry points)."""
    return build()
