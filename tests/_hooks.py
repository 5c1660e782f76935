"""Test helper: every hook on a model, to check that a method leaves none behind."""

from __future__ import annotations


def module_hooks(model) -> dict:
    """Every forward / pre / backward hook on every module (by name), and the global module hooks."""
    from torch.nn.modules import module as nn_module

    table = {
        name: tuple(tuple(d) for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))
        for name, m in model.named_modules()
    }
    for g in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"):
        table[g] = tuple(getattr(nn_module, g))
    return table
