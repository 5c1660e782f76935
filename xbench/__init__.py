"""xbench: a benchmark harness for explainability methods on vision-language models."""

__version__ = "0.1.0"
