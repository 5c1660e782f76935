"""Built-in explanation methods, installed as ``xbench.methods`` (never a top-level ``methods``)."""

if __name__ != "xbench.methods":  # pragma: no cover - guarded import path
    raise ImportError(f"xbench's methods must be imported as 'xbench.methods', not {__name__!r}")
