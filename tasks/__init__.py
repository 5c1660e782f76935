"""Built-in task adapters, installed as ``xbench.tasks`` (never a top-level ``tasks``)."""

if __name__ != "xbench.tasks":  # pragma: no cover - guarded import path
    raise ImportError(f"xbench's task adapters must be imported as 'xbench.tasks', not {__name__!r}")
