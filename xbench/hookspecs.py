"""The hooks xbench calls. Every plugin, built-in or outside, implements some of these.

Registration hooks are called once, when the plugin manager is built, each with the
registry of its kind; a plugin calls ``registry.register(obj)`` for each object it adds.
Lifecycle hooks are called by the runner and are for observers (loggers, trackers);
their return values are ignored.
"""

import pluggy

hookspec = pluggy.HookspecMarker("xbench")
hookimpl = pluggy.HookimplMarker("xbench")


@hookspec
def xbench_register_methods(registry):
    """Register explanation methods.

    :param registry: the method :class:`xbench.registry.Registry`; call
        ``registry.register(cls)`` with an :class:`xbench.api.Method` subclass.
    """


@hookspec
def xbench_register_tasks(registry):
    """Register task adapters.

    :param registry: the task registry; call ``registry.register(cls)`` with an
        :class:`xbench.api.Task` subclass.
    """


@hookspec
def xbench_register_metrics(registry):
    """Register per-sample map metrics.

    :param registry: the metric registry; call ``registry.register(cls)`` with an
        :class:`xbench.api.Metric` subclass. A metric computes from the sample, the
        generation and the map alone, unless it declares ``needs`` (``"model"``,
        ``"reference"``): then the runner also passes a :class:`xbench.api.MetricContext`
        holding the model and the reference method's map for the same generation.
    """


@hookspec
def xbench_register_models(registry):
    """Register named models (a zoo): names usable as ``--model NAME``.

    :param registry: the model registry; call ``registry.register(spec)`` with an
        :class:`xbench.models.ModelSpec` whose ``path()`` returns a local directory in
        Hugging Face layout (building it offline if needed).
    """


@hookspec
def xbench_register_model_families(registry):
    """Register model-family adapters, chosen by a checkpoint's ``config.json`` ``model_type``.

    :param registry: the model-family registry; call ``registry.register(cls)`` with a
        :class:`xbench.api.VLM` subclass that has ``family`` (its name), ``model_types`` (a tuple
        of HF model types) and a ``load(path, *, identity, device, dtype, attn_implementation)``
        classmethod returning an instance (anything else is refused, naming the plugin).
    """


@hookspec
def xbench_run_started(run):
    """Called once before the first sample of a run.

    :param run: a dict with ``run_id``, ``out_dir``, ``method``, ``task``, ``model`` and
        the run's ``config``.
    """


@hookspec
def xbench_sample_recorded(run, record):
    """Called after each sample's record was written and flushed.

    :param run: the dict given to :func:`xbench_run_started`.
    :param record: the JSON-ready record just appended to ``samples.jsonl``.
    """


@hookspec
def xbench_run_finished(run, summary):
    """Called once after ``summary.json`` was written.

    :param run: the dict given to :func:`xbench_run_started`.
    :param summary: the summary dict as written.
    """
