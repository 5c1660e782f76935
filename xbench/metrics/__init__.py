"""Per-sample map metrics (see :class:`xbench.api.Metric`)."""
