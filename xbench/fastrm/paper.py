"""``xbench fastrm paper``: the FastRM paper's tables from local VQA v2, GQA and POPE files.

One command labels VQA v2's training split with the reference (``gradient_relevancy``, maps
binarised at tau 0.3 by default), trains the proxy of each head, and writes, each as
``<out>/<name>.md`` and ``.json`` through :mod:`xbench.fastrm.ablate`'s table builders:

* ``transfer_tasks``: the base proxy scored on VQA v2's held-out split, GQA and each POPE split
  (per-patch accuracy, precision, recall, F1, IoU, AUROC at tau, the scorer of
  ``xbench fastrm evaluate``; the model's answer accuracy on each set beside);
* ``ablation_threshold``, ``ablation_size``, ``ablation_steps``: the labelling threshold, the
  number of training questions and the step count, scored on VQA v2's held-out split.

Validation (the decision threshold) follows :mod:`xbench.fastrm.splits`: by default questions
of VQA v2's held-out split past the test ones, on images none of them shows. Every table records
the command that remakes it, the model and data hashes, the software and device, and whether the
data folders were generated (:mod:`xbench.taskgen` writes ``generated.json`` beside them). Every
proxy trained is saved under ``--proxies`` (default ``<out>/proxies``), named in its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from xbench.fastrm.ablate import _comma_list, _each, _each_pairs, _one
from xbench.fastrm.splits import FastRMData, SplitPlan

#: the tables ``xbench fastrm paper`` makes (names of :data:`xbench.fastrm.ablate.TABLES`), by default all
PAPER_TABLES = ("tasks", "threshold", "size", "steps")
#: the training task and its splits
TRAIN_TASK, TRAIN_SPLIT, HELDOUT_SPLIT = "vqa_v2", "train2014", "val2014"
GQA_SPLIT, POPE_SPLITS = "testdev", ("random", "popular", "adversarial")

#: what the recorded ``xbench fastrm paper`` command holds, as in :data:`xbench.fastrm.ablate.RECIPE_OPTIONS`
RECIPE_OPTIONS = (
    ("vqa_v2", _one), ("gqa", _one), ("pope", _one), ("gqa_split", _one), ("pope_splits", _comma_list),
    ("model", _one), ("reference", _one), ("samples", _one), ("val_samples", _one), ("test_samples", _one),
    ("steps", _one), ("batch_size", _one), ("lr", _one), ("seed", _one), ("tau", _one), ("heads", _comma_list),
    ("taus", _comma_list), ("fractions", _comma_list), ("step_grid", _comma_list), ("tables", _comma_list),
    ("out", _one),
)  # fmt: skip
OTHER_OPTIONS = (
    ("train_split", _one), ("test_split", _one), ("val_split", _one), ("train_seed", _one),
    ("weight_decay", _one), ("aux_weight", _one), ("ema", _one), ("noise_std", _one), ("max_new_tokens", _one),
    ("reference_param", _each), ("augment", _each_pairs), ("proxies", _one),
)  # fmt: skip


@dataclass(frozen=True)
class HeldOut:
    """One held-out set of another task: its task adapter, data folder and split."""

    task: str
    data_dir: Path
    split: str

    @property
    def name(self) -> str:
        return f"{self.task}/{self.split}"


def heldout_sets(gqa: Path, gqa_split: str, pope: Path, pope_splits: Sequence[str]) -> list[HeldOut]:
    return [HeldOut("gqa", Path(gqa), gqa_split), *(HeldOut("pope", Path(pope), s) for s in pope_splits)]


def training_plan(plan: SplitPlan, vqa_v2: Path) -> SplitPlan:
    """``plan`` (the command's split plan) on VQA v2 read from ``vqa_v2``."""
    from dataclasses import replace

    return replace(plan, task=TRAIN_TASK, task_params={**plan.task_params, "data_dir": str(vqa_v2)})


def heldout_data(plan: SplitPlan, sets: Sequence[HeldOut]) -> dict[str, FastRMData]:
    """Name -> the test-only :class:`FastRMData` of each held-out set (same seed, test sample
    count and noise as ``plan``), with no model or reference yet: their tasks are built (and
    checked) here, so that a bad folder fails before any model loads."""
    out = {}
    for h in sets:
        sub = SplitPlan(task=h.task, task_params={"data_dir": str(h.data_dir)}, seed=plan.seed, test_split=h.split,
                        test_samples=plan.test_samples, noise_std=plan.noise_std)  # fmt: skip
        out[h.name] = FastRMData(sub, None, None, None)
        out[h.name].check_tasks()
    return out


def label_heldout(data: Mapping[str, FastRMData], like: FastRMData) -> dict:
    """Name -> the labelled test set of each held-out :class:`FastRMData`, with the model,
    reference, label cache and settings of ``like`` (the training task's data)."""
    out = {}
    for name, d in data.items():
        d.vlm, d.reference, d.cache, d.settings = like.vlm, like.reference, like.cache, like.settings
        out[name] = d.test()
    return out


def generated_note(folders: Sequence[Path]) -> str | None:
    """What :mod:`xbench.taskgen`'s ``generated.json`` beside (or in) the data folders says, else None."""
    from xbench.taskgen import MANIFEST

    for folder in folders:
        for path in (Path(folder) / MANIFEST, Path(folder).parent / MANIFEST):
            if path.is_file():
                info = json.loads(path.read_text())
                return f"{info.get('generated')} (sizes {info.get('sizes')}, seed {info.get('seed')}; {path})"
    return None


def provenance(vlm, tasks: Mapping[str, Any], device: str, started: tuple[str, str | None]) -> dict[str, Any]:
    """Software, device, model, and each task's data folder and hash; ``started``: the start time
    and the git commit then (:func:`xbench.provenance.git_sha`), so that the commit recorded is
    the code that ran even when the checkout changes during a long run."""
    from xbench.provenance import environment

    env = environment(device)
    folders = [t.root for t in tasks.values()]
    return {
        "software": f"xbench {env['xbench']} (git {started[1]}), python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['platform']}",
        "device": env["device_name"],
        "model": f"{vlm.name} (model hash {vlm.model_hash}, config hash {vlm.config_hash})",
        "data": {name: f"{t.root} (data hash {t.data_hash()})" for name, t in tasks.items()},
        "data_generated": generated_note(folders) or "no generated.json found: the folders' own files",
        "started": started[0],
    }


def run(args) -> int:
    """The command: check every task, load the model, label, train and write the tables."""
    import time

    from xbench.errors import ParameterError
    from xbench.fastrm import ablate
    from xbench.fastrm.cli import _context, _log, _plan, _train_config
    from xbench.fastrm.proxy import model_identity
    from xbench.provenance import git_sha, now

    ablate.check_tables(args.tables, PAPER_TABLES)
    if args.confidence_samples:
        raise ParameterError("xbench fastrm paper does not score confidence (--confidence-samples); "
                             "xbench fastrm train and evaluate do")  # fmt: skip
    started = (now(), git_sha())
    plan = training_plan(_plan(args), args.vqa_v2)
    heldout = heldout_data(plan, heldout_sets(args.gqa, args.gqa_split, args.pope, args.pope_splits))
    ctx = _context(args, plan)  # checks the VQA v2 tasks, then loads the model
    t0 = time.perf_counter()
    train, val = ctx.train_val()
    test = ctx.test()
    scored_on = {f"{TRAIN_TASK}/{args.test_split}": test, **label_heldout(heldout, ctx)}
    label_seconds = time.perf_counter() - t0
    proxies = args.proxies or args.out / "proxies"
    trainer = ablate.Trainer(train, val, model_identity(ctx.vlm), not args.no_progress, _log, save_dir=proxies)
    base = _train_config(args, head=args.heads[0])
    grids = ablate.Grids(args.taus, args.fractions, args.step_grid, "answer_type", {})
    inputs = ablate.Inputs(trainer, test, base, args.heads, grids, scored_on)
    setup = _setup(args, ctx, heldout, inputs, proxies, started)
    for path in ablate.write_tables(args.tables, inputs, args.out, setup, label_seconds):
        print(f"wrote {path}")
    return 0


def _setup(args, ctx, heldout: Mapping[str, FastRMData], inputs, proxies: Path, started: tuple) -> dict[str, Any]:
    """Every table's setup: the ablation setup (with the ``xbench fastrm paper`` command that
    remakes the tables), the held-out sets, where the proxies are, and the provenance."""
    from xbench.fastrm import ablate
    from xbench.fastrm.cli import _ablation_setup, _defaults

    defaults = _defaults("paper", "--vqa-v2", "-", "--gqa", "-", "--pope", "-")
    command = ablate.command_line(vars(args), defaults, "paper", RECIPE_OPTIONS, OTHER_OPTIONS)
    train, val = inputs.trainer.train, inputs.trainer.val
    setup = _ablation_setup(args, ctx, train, val, inputs.test, inputs.base, command)
    tasks = {f"{TRAIN_TASK}/{split}": ctx.task(split) for split in dict.fromkeys((args.train_split, args.test_split))}
    tasks.update({name: d.task(d.plan.test_split) for name, d in heldout.items()})
    setup["held-out sets"] = ", ".join(f"{name} {len(s)} samples" for name, s in inputs.scored_on.items())
    setup["proxies"] = f"{proxies} (one folder per proxy trained, named in each row's proxy column)"
    setup["provenance"] = provenance(ctx.vlm, tasks, str(ctx.vlm.device), started)
    return setup
