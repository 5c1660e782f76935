"""`xbench fastrm train|evaluate|ablate|install` end to end on the random tiny model (tiny sizes)."""

import contextlib
import io
import json

import pytest

from xbench.cli import main

SMALL = [
    "--model",
    "tiny-random-llava",
    "--samples",
    "12",
    "--val-samples",
    "4",
    "--test-samples",
    "6",
    "--label-batch-size",
    "8",
    "--max-new-tokens",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fastrm-cli-cache")


@pytest.fixture(scope="module")
def proxy_dir(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy") / "p"
    argv = ["fastrm", "train", *SMALL, "--steps", "4", "--batch-size", "4", "--cache", str(cache), "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (out.parent / "train_stdout.txt").write_text(printed.getvalue())
    return out


def test_train_writes_a_proxy_naming_its_model(proxy_dir, capsys):
    cfg = json.loads((proxy_dir / "proxy.json").read_text())
    assert cfg["model"]["id"] == "tiny-random-llava" and cfg["head"] == "attention"
    assert cfg["info"]["train"]["steps"] == 4 and cfg["info"]["train"]["n_train"] == 12
    metrics = json.loads((proxy_dir / "metrics.json").read_text())
    assert metrics["n_samples"] == 6 and {"f1", "auroc", "accuracy", "iou"} <= set(metrics["map"])
    assert metrics["noise_ceiling"]["f1"] is not None


def test_train_prints_and_keeps_the_validation_scores(proxy_dir):
    cfg = json.loads((proxy_dir / "proxy.json").read_text())
    val = cfg["info"]["val"]
    assert val["threshold"] == cfg["decision_threshold"] and val["n_patches"] > 0
    assert cfg["info"]["train"]["decision_threshold_from"] == "validation F1"
    printed = (proxy_dir.parent / "train_stdout.txt").read_text()
    line = next(x for x in printed.splitlines() if x.startswith("validation ("))
    assert f"decision threshold {val['threshold']}" in line and f"f1={val['f1']:.4f}" in line
    assert printed.index("validation (") < printed.index("FastRM attention vs")  # before the test scores


def test_train_with_an_augmented_copy_of_the_training_samples(cache, tmp_path, capsys):
    from xbench.fastrm.cli import _context
    from xbench.cli import build_parser

    argv = ["fastrm", "train", *SMALL, "--steps", "2", "--batch-size", "4", "--cache", str(cache)]
    argv += ["--augment", "flip=horizontal", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    train_info = json.loads((tmp_path / "p" / "proxy.json").read_text())["info"]["train"]
    assert train_info["n_train"] == 24 and train_info["n_val"] == 4
    assert train_info["augment"] == [{"flip": "horizontal"}]
    train, val = _context(build_parser().parse_args(argv)).train_val()
    plain = train.ids[:12]
    assert train.ids[12:] == [f"{i}-flip-horizontal" for i in plain]  # the same samples, mirrored
    assert all(i.startswith("test-") for i in val.ids)  # validation stays plain, on the held-out split
    ctx = _context(build_parser().parse_args(argv + ["--val-split", "train"]))
    train, val = ctx.train_val()
    assert train.ids[12:] == [f"{i}-flip-horizontal" for i in train.ids[:12]] and len(val) == 4
    assert not {f"{i}-flip-horizontal" for i in val.ids} & set(train.ids)  # no mirrored validation sample


def test_train_seed_changes_the_weights_not_the_samples(cache, proxy_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    argv = ["fastrm", "train", *SMALL, "--steps", "4", "--batch-size", "4", "--cache", str(cache)]
    assert main(argv + ["--train-seed", "1", "--out", str(tmp_path / "p")]) == 0
    base = json.loads((proxy_dir / "proxy.json").read_text())["info"]
    other = json.loads((tmp_path / "p" / "proxy.json").read_text())["info"]
    assert other["train"]["seed"] == 1 and base["train"]["seed"] == 0
    assert other["test"]["n_samples"] == base["test"]["n_samples"] and other["train"]["labels"] == base["train"]["labels"]
    w0, w1 = load_file(str(proxy_dir / "proxy.safetensors")), load_file(str(tmp_path / "p" / "proxy.safetensors"))
    assert not torch.equal(w0["head.q.weight"], w1["head.q.weight"])


def test_validation_is_held_out_on_other_images_than_the_test(cache):
    from dataclasses import replace

    from xbench.cli import build_parser
    from xbench.fastrm.cli import _context

    args = build_parser().parse_args(["fastrm", "train", *SMALL, "--cache", str(cache), "--out", "unused"])
    ctx = _context(args)
    train, val = ctx.train_val()
    test = ctx.test()
    assert len(train) == 12 and len(val) == 4 and len(test) == 6
    assert "past the test samples" in ctx.plan.val_from()
    assert not {m["image_id"] for m in val.meta} & {m["image_id"] for m in test.meta}
    assert not set(val.ids) & set(test.ids) and all(i.startswith("test-") for i in val.ids)
    ctx.plan = replace(ctx.plan, val_split="train")  # the samples right after the training ones, as before
    train2, val2 = ctx.train_val()
    assert train2.ids == train.ids and all(i.startswith("train-") for i in val2.ids) and len(val2) == 4
    assert "after the training ones" in ctx.plan.val_from()


def test_run_and_evaluate_with_the_proxy(proxy_dir, cache, tmp_path, capsys):
    run = [
        "run",
        "--method",
        "fastrm",
        "--model",
        "tiny-random-llava",
        "--param",
        f"proxy={proxy_dir}",
        "--limit",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--warmup",
        "0",
    ]
    assert main(run) == 0
    assert "2 samples explained, 0 errors" in capsys.readouterr().out
    ev = [
        "fastrm",
        "evaluate",
        "--proxy",
        str(proxy_dir),
        *SMALL[:2],
        "--test-samples",
        "6",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--cache",
        str(cache),
        "--output",
        str(tmp_path / "e.json"),
    ]
    assert main(ev) == 0
    out = capsys.readouterr().out
    assert "f1=" in out and "noise ceiling" in out
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads((proxy_dir / "metrics.json").read_text())


def test_ablate_writes_markdown_and_json_tables(cache, tmp_path, capsys):
    argv = [
        "fastrm",
        "ablate",
        *SMALL,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--cache",
        str(cache),
        "--heads",
        "attention,mlp",
        "--taus",
        "0.2,0.4",
        "--fractions",
        "0.5,1",
        "--step-grid",
        "2,3",
        "--out",
        str(tmp_path / "res"),
    ]
    assert main(argv) == 0
    trained = [x for x in capsys.readouterr().err.splitlines() if x.startswith("training ")]
    # 4 taus x heads, 2 + 2 sizes (100% is the base run), 2 step counts (3 is the base run), 3 x 2 transfer
    assert len(trained) == 16, trained
    for name, n_rows in (("ablation_threshold", 4), ("ablation_size", 4), ("ablation_steps", 4), ("transfer", 12)):
        table = json.loads((tmp_path / "res" / f"{name}.json").read_text())
        assert len(table["rows"]) == n_rows, name
        assert {r["head"] for r in table["rows"]} == {"attention", "mlp"}
        for r in table["rows"]:  # validation scores beside the test scores, to choose settings by
            assert 0 <= r["val_f1"] <= 1 and 0 <= r["val_accuracy"] <= 1
        md = (tmp_path / "res" / f"{name}.md").read_text()
        assert md.startswith("# ") and md.count("\n|") == n_rows + 2  # header, rule, rows
        assert "xbench fastrm ablate" in table["setup"]["command"]
        assert "attention {'normalise': 'minmax'" in table["setup"]["heads"]  # what the rows were trained with
        assert "per head: attention 1, mlp 3" in table["setup"]["training"]
        assert table["setup"]["training"].endswith(", last weights")  # no --ema: not averaged
    rows = json.loads((tmp_path / "res" / "ablation_threshold.json").read_text())["rows"]
    assert [r["tau"] for r in rows] == [0.2, 0.2, 0.4, 0.4]
    assert rows[0]["positive_rate"] > rows[2]["positive_rate"]  # a lower tau marks more patches


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "--method", "fastrm", "--param", "proxy=/no/such/proxy", "--model", "tiny-random-llava"],
            "FastRM proxy directory '/no/such/proxy' does not exist",
        ),
        (["fastrm", "evaluate", "--proxy", "/no/such/proxy"], "FastRM proxy directory '/no/such/proxy' does not exist"),
        (["fastrm", "install", "/no/such/proxy"], "FastRM proxy directory '/no/such/proxy' does not exist"),
        (
            ["fastrm", "train", "--model", "tiny-random-llava", "--reference", "rollot", "--out", "x"],
            "unknown method 'rollot'",
        ),
        (
            ["fastrm", "train", "--model", "tiny-random-llava", "--reference-param", "token=middle", "--out", "x"],
            "method 'gradient_relevancy': token='middle' is not one of ['mean', 'first', 'last']",
        ),
        (
            ["fastrm", "train", "--model", "tiny-random-llava", "--augment", "flip=sideways", "--out", "x"],
            "task 'easyvqa': flip='sideways' is not one of ['none', 'horizontal', 'vertical', 'both']",
        ),
        (
            ["fastrm", "labels", "--model", "tiny-random-llava", "--task-param", "mask_tolerence=3"],
            "task 'easyvqa' has no parameter(s) ['mask_tolerence'] (did you mean 'mask_tolerance'?)",
        ),
        (
            [
                "fastrm",
                "ablate",
                "--model",
                "tiny-random-llava",
                "--reference",
                "rollout",
                "--tables",
                "size,nope",
                "--samples",
                "4",
                "--val-samples",
                "2",
                "--test-samples",
                "2",
                "--no-progress",
            ],
            "unknown ablation table(s) ['nope']",
        ),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path):
    if "--tables" in argv:
        argv = argv + ["--cache", str(tmp_path)]
    assert main(argv + (["--no-progress"] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("xbench: error: ") and message in err[-1]


def _label_rows(ids, images):
    import numpy as np
    import torch

    from xbench.fastrm.labels import LabelSet
    from xbench.fastrm.store import Row

    rows = [Row(i, k, torch.zeros(1, 1), torch.zeros(1, 1), np.zeros(1, np.float32), (1, 1), 1.0, {"image_id": image})
            for k, (i, image) in enumerate(zip(ids, images))]  # fmt: skip
    return LabelSet.from_rows(rows)


@pytest.mark.parametrize("images, expect", [([1, 2, 3, 1], ["test-2"]), ([1, 2, 2, 1], None)])
def test_validation_skips_test_images_and_says_when_none_is_left(images, expect, capsys):
    from xbench.errors import ParameterError
    from xbench.fastrm.splits import FastRMData, SplitPlan

    plan = SplitPlan("easyvqa", test_samples=2, samples=38000, val_samples=3)
    ctx = FastRMData(plan, None, None, None)
    ctx.test = lambda: _label_rows(["test-0", "test-1"], [1, 2])
    asked = []
    ctx.labels = lambda split, n, noise, extra=None: asked.append(n) or _label_rows(
        [f"test-{i}" for i in range(4)], images
    )  # the split holds 4 samples however many are asked for
    if expect is None:
        with pytest.raises(ParameterError, match="no validation samples in the test split.*--val-split train"):
            ctx.heldout_val()
    else:
        assert ctx.heldout_val().ids == expect
        assert "only 1 validation samples" in capsys.readouterr().err
    assert asked == [8, 16]  # asked for more once, then saw the split was used up


@pytest.mark.parametrize("value", [",", "flip"])
def test_a_malformed_augment_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fastrm", "train", "--augment", value, "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --augment: " in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, ema",
    [
        (["fastrm", "train", "--out", "x"], 0.9999),  # the shipped recipe averages the weights
        (["fastrm", "train", "--ema", "0", "--out", "x"], None),  # 0: the last weights
        (["fastrm", "train", "--ema", "0.99", "--out", "x"], 0.99),
        (["fastrm", "ablate"], None),  # the ablations' short runs keep their last weights
    ],
)
def test_weight_average_defaults_to_the_recipe(argv, ema):
    from xbench.cli import build_parser
    from xbench.fastrm.cli import _train_config

    assert _train_config(build_parser().parse_args(argv), head="attention").ema == ema


@pytest.mark.parametrize("value", ["1", "-0.1", "often"])
def test_a_decay_outside_zero_one_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fastrm", "train", "--ema", value, "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"expected a decay in [0, 1), got {value!r}" in err


def test_the_ablation_command_remakes_every_option_that_changes_a_table():
    """The recorded command parses back to the same options; every ablate option is either recorded
    or listed here as one that cannot change a table."""
    import shlex

    from xbench.cli import build_parser
    from xbench.fastrm.ablate import OTHER_OPTIONS, RECIPE_OPTIONS, command_line

    defaults = vars(build_parser().parse_args(["fastrm", "ablate"]))

    argv = ["fastrm", "ablate", "--model", "tiny-random-llava", "--task", "easyvqa", "--reference", "rollout",
            "--samples", "30", "--val-samples", "7", "--test-samples", "9", "--steps", "11", "--batch-size", "5",
            "--lr", "0.002", "--seed", "3", "--tau", "0.25", "--heads", "mlp", "--taus", "0.2,0.4",
            "--fractions", "0.5,1", "--step-grid", "2,3", "--tables", "size,steps", "--out", "some dir",
            "--val-split", "train", "--train-seed", "4", "--train-split", "test", "--test-split", "train",
            "--weight-decay", "0.1", "--aux-weight", "0", "--ema", "0.99", "--noise-std", "0.01",
            "--max-new-tokens", "3", "--transfer-key", "kind", "--transfer-groups", "a=colour;b=yes/no shape",
            "--task-param", "flip=vertical", "--task-param", "mask_tolerance=8", "--reference-param",
            "residual=0.3", "--augment", "flip=horizontal", "--augment", "flip=both,mask_tolerance=4",
            "--label-batch-size", "2", "--eval-every", "3", "--confidence-samples", "5", "--threads", "1",
            "--device", "cpu", "--cache", "c", "--no-progress"]  # fmt: skip
    args = build_parser().parse_args(argv)
    command = command_line(vars(args), defaults)
    assert command.startswith("xbench fastrm ablate --model tiny-random-llava ")
    again = build_parser().parse_args(shlex.split(command)[1:])
    recorded = {dest for dest, _ in (*RECIPE_OPTIONS, *OTHER_OPTIONS)}
    unrecorded = {"label_batch_size", "eval_every", "confidence_samples", "threads", "device", "cache", "no_progress"}
    internal = {"func", "command", "fastrm_command", "fastrm_func", "head_param"}
    assert set(vars(args)) == recorded | unrecorded | internal
    assert {d: getattr(again, d) for d in recorded} == {d: getattr(args, d) for d in recorded}
    assert "--ema" not in command_line(defaults, defaults)  # defaults left out
