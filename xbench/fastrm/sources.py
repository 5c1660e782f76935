"""Where ``xbench fastrm train`` takes its training rows from, besides the label store of its
split plan: rows labelled online (``--online``, nothing stored) or a store directory made
beforehand (``--store DIR``, no model loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from xbench.errors import DataError, ParameterError
from xbench.fastrm.labels import label_rows, online_spec
from xbench.fastrm.labelset import LabelSet, open_store
from xbench.fastrm.store import Row
from xbench.fastrm.train import RowSource


def meta_filter(train_filter: tuple[str, list[str]] | None) -> Callable[[Row], bool] | None:
    """``--train-filter KEY=V1,V2`` as a row predicate (as :meth:`LabelSet.where` selects)."""
    if not train_filter:
        return None
    key, values = train_filter[0], set(train_filter[1])
    return lambda row: row.meta.get(key) in values


def online_source(data, train_filter=None) -> RowSource:
    """The training rows of ``data``'s plan (a :class:`~xbench.fastrm.splits.FastRMData`), labelled
    as training reads them: the first ``samples`` of the training split, then one copy per
    ``augment`` entry, in the order the stored set has them, so both train the same proxy.

    Validation must come from another split (the samples after the training ones would have to
    be told apart before they are labelled): ``--val-split`` equal to the training split is a
    :class:`~xbench.errors.ParameterError`.
    """
    plan, st = data.plan, data.settings
    if plan.validation_split == plan.train_split:
        raise ParameterError(
            f"--online validates on another split than the training one ({plan.train_split!r}); "
            "leave --val-split out (validation then comes from the held-out split) or train from the store"
        )

    def part(extra):
        task = data.task(plan.train_split, extra)
        return lambda: label_rows(data.vlm, task, data.reference, plan.samples, seed=plan.seed,
                                  batch_size=st.batch_size, max_new_tokens=st.max_new_tokens,
                                  store_dtype=st.store_dtype, progress=st.progress)  # fmt: skip

    spec = online_spec(data.vlm, data.task(plan.train_split), data.reference, plan.seed, st.max_new_tokens,
                       st.store_dtype)  # fmt: skip
    return RowSource.online([part(None)] + [part(extra) for extra in plan.augment], spec, meta_filter(train_filter))


def stored_sets(store: Path, val_store: Path | None) -> tuple[LabelSet, LabelSet | None, dict]:
    """``(train, val, model identity)`` of store directories (``--store`` / ``--val-store``); the
    identity is the one the store's spec recorded (a DataError when it has none)."""
    train = open_store(store)
    model = train.spec.get("model")
    if not isinstance(model, dict) or "hidden_size" not in model:
        raise DataError(f"FastRM label store {store}/spec.json records no model identity (its 'model' field)")
    val = open_store(val_store) if val_store else None
    if val is not None and val.spec.get("model", {}).get("model_hash") != model.get("model_hash"):
        raise DataError(f"--val-store {val_store} holds labels of another model than --store {store}")
    return train, val, model
