"""xbench: a benchmark harness for explainability methods on vision-language models."""

__version__ = "0.1.0"

# In a source checkout (``python -m xbench`` from the repository root, or a worker started
# there) this folder shadows the installed package; methods/ and tasks/ then sit beside it,
# not inside it, so they are made findable as xbench.methods / xbench.tasks here too.
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "methods")) and _os.path.isfile(_os.path.join(_root, "methods", "__init__.py")):
    __path__.append(_root)  # noqa: F821 - the package's own __path__
del _os, _here, _root
