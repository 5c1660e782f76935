"""Bad input corpus: every malformed input gets the clear message it must produce.

Each :class:`Case` builds its inputs in a temporary folder and returns the ``xbench``
arguments that use them; the command line runs in-process (``xbench.cli.main``). Three
outcomes are allowed, all without a traceback and without "internal error":

* ``exit=2`` and a one-line ``xbench: error: ...`` naming the thing at fault;
* ``exit=0`` and one *error record* whose message names it (a bad sample must not stop a run);
* ``exit=0`` and one *normal record* (inputs that look odd but are valid: grayscale,
  RGBA, 1x1 images... are converted to RGB and explained like any other).

Images and data files come through ``imagefiles``, a minimal file-based task defined here
(``data_dir/questions.jsonl``: one ``{"id", "image", "question", "answer"}`` per line).
Huge images: files over xbench's pixel budget (``xbench.datafiles.MAX_IMAGE_PIXELS``, 40 Mpx,
and ``MAX_ASPECT_RATIO``, 50:1; PIL's decompression-bomb limit of about 89 Mpx is kept too) are
refused from their header before decoding, as a per-sample error naming the file; larger-
than-usual images under the budget are resized by the processor like any other.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from xbench.api import Sample, SampleError, Task
from xbench.datafiles import parse_json
from xbench.errors import DataError
from xbench.hookspecs import hookimpl
from xbench.taskdata import member_path

# --------------------------------------------------------------------------- a file-based test task


class ImageFiles(Task):
    """Questions about image files listed in ``<data_dir>/questions.jsonl``."""

    name = "imagefiles"
    description = "test task: JSON lines of id, image (relative path), question, answer"

    def samples(self, limit=None, seed=0):
        if self.data_dir is None:
            raise DataError("task 'imagefiles' needs --data-dir")
        path = self.data_dir / "questions.jsonl"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise DataError(f"task 'imagefiles': {path} not found") from None
        for n, line in enumerate(lines[:limit], 1):
            try:
                q = parse_json(line)
                path = member_path(self.data_dir, q["image"], self.data_dir, allowed=False)
                if isinstance(path, str):
                    raise ValueError(path)
                yield Sample(q["id"], q["question"], [q["answer"]], image_path=path)
            except (ValueError, KeyError, TypeError) as exc:
                yield SampleError(f"line-{n}", f"{path} line {n} is not a question record: {type(exc).__name__}: {exc}")

    def score(self, sample, answer):
        return {"accuracy": float(answer.strip().lower() in sample.answers)}


class ImageFilesPlugin:
    @hookimpl
    def xbench_register_tasks(self, registry):
        registry.register(ImageFiles)


@pytest.fixture(scope="module")
def corpus_plugins(tiny_model_dir):
    from xbench.plugins import build

    return build(extra_plugins=(ImageFilesPlugin(),), load_entry_points=False)


# --------------------------------------------------------------------------- builders


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (its data is a 1x1 image): a bomb's signature."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1), "red")))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def shape_image(mode: str = "RGB", size=(64, 64)) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    img.paste((200, 30, 30), (w // 4, h // 4, max(w // 4 + 1, 3 * w // 4), max(h // 4 + 1, 3 * h // 4)))
    return img.convert(mode)


def gradient16() -> Image.Image:
    """A 64x64 16-bit grayscale image spanning 0..65535."""
    return Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))


def run_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--method", "raw_attention", "--task", "imagefiles", "--data-dir", str(data_dir), "--out", str(out),
            "--warmup", "0", "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def image_case(content: Callable[[], bytes] | None, name: str = "img.png") -> Callable[[Path], list[str]]:
    """Arguments for one question about ``content`` written to ``name`` (None: no file; "dir": a folder)."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        data.mkdir()
        if content == "dir":
            (data / name).mkdir()
        elif content is not None:
            (data / name).write_bytes(content())
        (data / "questions.jsonl").write_text(json.dumps({"id": "q1", "image": name, "question": "what colour is the shape?", "answer": "red"}) + "\n")
        return run_args(data, tmp / "out", "--limit", "1")

    return make


def data_case(text: str | None) -> Callable[[Path], list[str]]:
    """Arguments reading a questions file holding ``text`` (None: no file) next to a valid image."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        data.mkdir()
        (data / "img.png").write_bytes(png_bytes(shape_image()))
        if text is not None:
            (data / "questions.jsonl").write_text(text)
        return run_args(data, tmp / "out")

    return make


def model_case(change: Callable[[Path], Path | None]) -> Callable[[Path], list[str]]:
    """Arguments using a copy of tiny-random-llava altered by ``change`` (which may return another path)."""

    def make(tmp: Path) -> list[str]:
        from xbench.plugins import default

        model = tmp / "model"
        shutil.copytree(default().registries.models.get("tiny-random-llava").locate(), model)
        path = change(model)
        path = path if isinstance(path, Path) else model
        return ["run", "--method", "raw_attention", "--model", str(path), "--limit", "1", "--warmup", "0",
                "--no-progress", "--device", "cpu", "--out", str(tmp / "out")]  # fmt: skip

    return make


def edit_json(name: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(model: Path) -> None:
        data = json.loads((model / name).read_text())
        fn(data)
        (model / name).write_text(json.dumps(data))

    return change


def drop_tensors(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "lm_head" not in k}, str(model / "model.safetensors"))


def suite_case(text: str, *extra: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "suite.toml").write_text(text)
        return ["sweep", str(tmp / "suite.toml"), "--out", str(tmp / "sweep"), *extra]

    return make


def cli_case(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [a.replace("{tmp}", str(tmp)) for a in argv]


def records_case(content: bytes, resume: bool = True) -> Callable[[Path], list[str]]:
    """``run [--resume]`` on a run folder whose samples.jsonl holds ``content``."""

    def make(tmp: Path) -> list[str]:
        (tmp / "out").mkdir()
        (tmp / "out" / "samples.jsonl").write_bytes(content)
        return ["run", "--method", "raw_attention", "--limit", "1", "--warmup", "0", "--no-progress", "--device", "cpu",
                "--out", str(tmp / "out")] + (["--resume"] if resume else [])  # fmt: skip

    return make


def file_case(name: str, content: bytes, *argv: str) -> Callable[[Path], list[str]]:
    """``argv`` (``{file}`` replaced) after writing ``content`` to ``name``."""

    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        return [a.replace("{file}", str(tmp / name)) for a in argv]

    return make


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """``make(tmp) -> argv``; ``expect``: substrings of stderr (exit 2) or of the record's error (exit 0)."""

    id: str
    make: Callable[[Path], list[str]]
    expect: tuple[str, ...] = ()
    exit: int = 2
    record: str | None = None  # "error": one error record; "ok": one normal record


RUN = ("run", "--method", "raw_attention", "--limit", "1", "--warmup", "0", "--no-progress", "--device", "cpu", "--out", "{tmp}/o")
VALID = 'models = ["tiny-random-llava"]\ntasks = ["easyvqa"]\nseeds = [0]\n[methods]\nrollout = {}\n[run]\nlimit = 1\n'

CLI_CASES = [
    Case("cli-no-command", cli_case(), ("the following arguments are required: command",)),
    Case("cli-unknown-command", cli_case("rnu"), ("invalid choice: 'rnu'",)),
    Case("cli-no-method", cli_case("run"), ("the following arguments are required: --method",)),
    Case("cli-unknown-method", cli_case("run", "--method", "rolout"), ("unknown method 'rolout'. Did you mean 'rollout'?",)),
    Case("cli-unknown-task", cli_case("run", "--method", "rollout", "--task", "easyvq"), ("unknown task 'easyvq'. Did you mean 'easyvqa'?",)),
    Case("cli-unknown-model", cli_case("run", "--method", "rollout", "--model", "tiny-random-lava"), ("unknown model 'tiny-random-lava'. Did you mean 'tiny-random-llava'?",)),
    Case("cli-unknown-metric", cli_case("run", "--method", "rollout", "--metrics", "pointing_game,energy"), ("unknown metric 'energy'",)),
    Case("cli-limit-zero", cli_case("run", "--method", "rollout", "--limit", "0"), ("argument --limit: expected a positive integer, got '0'",)),
    Case("cli-limit-text", cli_case("run", "--method", "rollout", "--limit", "ten"), ("argument --limit: expected a positive integer, got 'ten'",)),
    Case("cli-batch-negative", cli_case("run", "--method", "rollout", "--batch-size", "-2"), ("argument --batch-size: expected a positive integer",)),
    Case("cli-seed-text", cli_case("run", "--method", "rollout", "--seed", "x"), ("argument --seed: invalid int value: 'x'",)),
    Case("cli-seed-negative", cli_case(*RUN, "--seed", "-1"), ("seed must be between 0 and 2**32 - 1",)),
    Case("cli-warmup-negative", cli_case(*RUN, "--warmup", "-1"), ("warmup must be 0 or more batches, got -1",)),
    Case("cli-param-no-equals", cli_case(*RUN, "--param", "residual"), ("--param expects key=value, got 'residual'",)),
    Case("cli-param-unknown", cli_case(*RUN, "--param", "alpha=1"), ("method 'raw_attention' has no parameter(s) ['alpha']",)),
    Case("cli-task-param-bad-value", cli_case(*RUN, "--task-param", "mask_tolerance=abc"), ("task 'easyvqa': mask_tolerance='abc' is not an integer >= 0 and <= 255",)),
    Case("cli-split-unknown", cli_case(*RUN, "--split", "val"), ("task 'easyvqa' has no split 'val'; choose from ['test', 'train']",)),
    Case("cli-dtype-unknown", cli_case(*RUN, "--dtype", "float33"), ("unknown dtype 'float33'",)),
    Case("cli-dtype-not-float", cli_case(*RUN, "--dtype", "int8"), ("unknown dtype 'int8'",)),
    Case("cli-device-unknown", cli_case(*RUN, "--device", "tpu"), ("unknown device 'tpu'",)),
    Case("cli-device-absent", cli_case(*RUN, "--device", "cuda:3"), ("device 'cuda:3' is not available here",)),
    Case("cli-out-is-a-file", file_case("f", b"x", *RUN[:-1], "{file}"), ("cannot create the run directory",)),
    Case("cli-out-holds-records", records_case(b'{"id": "x"}\n', resume=False), ("already holds records; pass --resume",)),
    Case("cli-sweep-unknown-executor", cli_case("sweep", "s.toml", "--executor", "dask"), ("invalid choice: 'dask'",)),
    Case("cli-sweep-address-without-ray", suite_case(VALID, "--address", "auto"), ("executor 'local' has no parameter(s) ['address']; it takes none",)),
]

SUITE_CASES = [
    Case("suite-missing", cli_case("sweep", "{tmp}/nope.toml"), ("suite file", "nope.toml' not found")),
    Case("suite-not-toml", suite_case("models = [\n"), ("is not valid TOML",)),
    Case("suite-not-utf8", file_case("s.toml", b"\xff\xfe\x00", "sweep", "{file}"), ("suite file", "is not UTF-8 text")),
    Case("suite-unknown-key", suite_case(VALID.replace("seeds", "seed")), ("suite: unknown key 'seed'. Did you mean 'seeds'?",)),
    Case("suite-no-methods", suite_case('models = ["tiny-random-llava"]\n'), ("suite defines no methods",)),
    Case("suite-unknown-method", suite_case(VALID.replace("rollout =", "rolout =")), ("unknown method 'rolout'. Did you mean 'rollout'?",)),
    Case("suite-unknown-task", suite_case(VALID.replace('"easyvqa"', '"easy_vqa"')), ("unknown task 'easy_vqa'. Did you mean 'easyvqa'?",)),
    Case("suite-unknown-model", suite_case(VALID.replace('"tiny-random-llava"', '"tiny-llava"')), ("unknown model 'tiny-llava'",)),
    Case("suite-model-dir-missing", suite_case(VALID.replace('"tiny-random-llava"', '"/nonexistent/llava-7b"')), ("model directory '/nonexistent/llava-7b' does not exist",)),
    Case("suite-seeds-text", suite_case(VALID.replace("seeds = [0]", 'seeds = ["a"]')), ("suite seeds must be a non-empty list of integers",)),
    Case("suite-seeds-repeat", suite_case(VALID.replace("seeds = [0]", "seeds = [1, 1]")), ("suite seeds repeat a value: [1, 1]",)),
    Case("suite-run-option-typo", suite_case(VALID + "batchsize = 2\n"), ("suite [run]: unknown key 'batchsize'. Did you mean 'batch_size'?",)),
    Case("suite-limit-zero", suite_case(VALID.replace("limit = 1", "limit = 0")), ("suite [run] limit must be an integer >= 1, got 0",)),
    Case("suite-limit-text", suite_case(VALID.replace("limit = 1", 'limit = "all"')), ("suite [run] limit must be an integer >= 1, got 'all'",)),
    Case("suite-unknown-metric", suite_case(VALID + 'metrics = ["pointing"]\n'), ("unknown metric 'pointing'. Did you mean 'pointing_game'?",)),
    Case("suite-method-param-unknown", suite_case(VALID.replace("rollout = {}", "rollout = {alpha = 1}")), ("method 'rollout' has no parameter(s) ['alpha']",)),
    Case("suite-method-params-not-table", suite_case(VALID.replace("rollout = {}", "rollout = 3")), ("suite methods.rollout: parameters must be a table, got 3",)),
    Case("suite-same-cell-twice", suite_case(VALID.replace("rollout = {}", "rollout = [{}, {residual = 0.5}]")), ("two cells would share the folder easyvqa/tiny-random-llava/rollout/seed0",)),
    Case("suite-task-split-unknown", suite_case(VALID.replace('tasks = ["easyvqa"]\n', "") + '[tasks.easyvqa]\nsplit = "val"\n'), ("task 'easyvqa' has no split 'val'",)),
    Case("suite-task-key-typo", suite_case(VALID.replace('tasks = ["easyvqa"]\n', "") + '[tasks.easyvqa]\nsplits = "test"\n'), ("suite [tasks.easyvqa]: unknown key 'splits'. Did you mean 'split'?",)),
]

DATA_CASES = [
    Case("data-questions-missing", data_case(None), ("task 'imagefiles':", "questions.jsonl not found")),
    Case("data-line-not-json", data_case("{oops\n"), ("questions.jsonl line 1 is not a question record: JSONDecodeError",), exit=0, record="error"),
    Case("data-line-missing-field", data_case('{"id": "q1", "image": "img.png", "answer": "red"}\n'), ("line 1 is not a question record: KeyError: 'question'",), exit=0, record="error"),
]

IMAGE_CASES = [
    Case("image-corrupt", image_case(lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), ("cannot read image", "img.png"), exit=0, record="error"),
    Case("image-truncated", image_case(lambda: png_bytes(shape_image(size=(256, 256)).effect_spread(8))[:700]), ("cannot read image", "img.png"), exit=0, record="error"),
    Case("image-empty-file", image_case(lambda: b""), ("cannot read image", "img.png"), exit=0, record="error"),
    Case("image-missing", image_case(None), ("image file not found:", "img.png"), exit=0, record="error"),
    Case("image-is-a-directory", image_case("dir"), ("cannot read image", "img.png"), exit=0, record="error"),
    Case("image-text-file", image_case(lambda: b"not an image at all\n", "img.jpg"), ("cannot read image", "img.jpg"), exit=0, record="error"),
    Case("image-huge-bomb", image_case(lambda: png_claiming_size(30000, 30000)), ("img.png refused as too large", "exceeds limit"), exit=0, record="error"),
    Case("image-huge-over-limit", image_case(lambda: png_claiming_size(10000, 10000)), ("img.png refused as too large", "100000000 pixels"), exit=0, record="error"),
    Case("image-grayscale", image_case(lambda: png_bytes(shape_image("L"))), exit=0, record="ok"),
    Case("image-grayscale-16bit", image_case(lambda: png_bytes(gradient16())), exit=0, record="ok"),
    Case("image-float-tiff", image_case(lambda: png_bytes(Image.fromarray(np.ones((8, 8), np.float32)), "TIFF"), "img.tif"), ("img.tif has floating-point pixels",), exit=0, record="error"),
    Case("image-rgba", image_case(lambda: png_bytes(shape_image("RGBA"))), exit=0, record="ok"),
    Case("image-palette", image_case(lambda: png_bytes(shape_image("P"))), exit=0, record="ok"),
    Case("image-cmyk-jpeg", image_case(lambda: png_bytes(shape_image("CMYK"), "JPEG"), "img.jpg"), exit=0, record="ok"),
    Case("image-1x1", image_case(lambda: png_bytes(Image.new("RGB", (1, 1), "red"))), exit=0, record="ok"),
    Case("image-very-wide", image_case(lambda: png_bytes(shape_image(size=(2000, 40)))), exit=0, record="ok"),
    Case("image-large-under-limit", image_case(lambda: png_bytes(shape_image(size=(4000, 3000)))), exit=0, record="ok"),
    Case("image-jpeg-named-png", image_case(lambda: png_bytes(shape_image(), "JPEG")), exit=0, record="ok"),
]

MODEL_CASES = [
    Case("model-dir-missing", cli_case(*RUN, "--model", "{tmp}/no-such-model"), ("no-such-model' does not exist",)),
    Case("model-path-is-a-file", model_case(lambda m: m / "config.json"), ("config.json' is not a directory",)),
    Case("model-no-config", model_case(lambda m: (m / "config.json").unlink()), ("is incomplete: missing config.json",)),
    Case("model-no-weights", model_case(lambda m: (m / "model.safetensors").unlink()), ("is incomplete: missing model.safetensors or",)),
    Case("model-no-tokenizer", model_case(lambda m: [(m / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")] and None), ("is incomplete: missing tokenizer.json or",)),
    Case("model-config-bad-json", model_case(lambda m: (m / "config.json").write_text('{"model_type": "llava",')), ("cannot read", "config.json")),
    Case("model-config-not-object", model_case(lambda m: (m / "config.json").write_text("[]")), ("config.json holds a JSON list, not an object",)),
    Case("model-type-unsupported", model_case(edit_json("config.json", lambda c: c.update(model_type="bert"))), ("has model_type 'bert', which no model family supports (supported: ['llava'])",)),
    Case("model-type-absent", model_case(edit_json("config.json", lambda c: c.pop("model_type"))), ("has model_type None, which no model family supports",)),
    Case("model-weights-corrupt", model_case(lambda m: (m / "model.safetensors").write_bytes(b"\x00" * 64)), ("cannot load LlavaForConditionalGeneration from", "SafetensorError")),
    Case("model-weights-missing-tensors", model_case(drop_tensors), ("do not match its config.json: missing lm_head.weight",)),
    Case("model-weights-wrong-shape", model_case(edit_json("config.json", lambda c: c["text_config"].update(hidden_size=32))), ("do not match its config.json", "in the weights")),
    Case("model-tokenizer-bad-json", model_case(lambda m: (m / "tokenizer.json").write_text("{")), ("cannot load the processor of", "JSONDecodeError")),
]

#: FastRM proxy checkpoints (missing file, corrupt weights, wrong hidden size for the model,
#: proxy trained on another grid...). Engineers of the FastRM method add their cases here;
#: they run with the rest of the table.
def proxy_case(change: Callable[[Path], None] | None, model: str = "tiny-llava-easyvqa") -> Callable[[Path], list[str]]:
    """``run --method fastrm --param proxy=DIR`` with a copy of the default model's shipped proxy altered by ``change``."""

    def make(tmp: Path) -> list[str]:
        from xbench.fastrm.proxy_store import shipped_root

        proxy = tmp / "proxy"
        shutil.copytree(shipped_root() / "tiny-llava-easyvqa-attention", proxy)
        if change:
            change(proxy)
        return ["run", "--method", "fastrm", "--param", f"proxy={proxy}", "--model", model, "--limit", "1",
                "--warmup", "0", "--no-progress", "--device", "cpu", "--out", str(tmp / "out")]  # fmt: skip

    return make


FASTRM_PROXY_CASES: list[Case] = [
    Case("fastrm-proxy-dir-missing", cli_case("run", "--method", "fastrm", "--param", "proxy={tmp}/none"), ("FastRM proxy directory", "none' does not exist")),
    Case("fastrm-proxy-no-config", proxy_case(lambda p: (p / "proxy.json").unlink()), ("has no proxy.json",)),
    Case("fastrm-proxy-no-weights", proxy_case(lambda p: (p / "proxy.safetensors").unlink()), ("has no proxy.safetensors",)),
    Case("fastrm-proxy-config-bad-json", proxy_case(lambda p: (p / "proxy.json").write_text("{")), ("cannot read FastRM proxy config", "proxy.json")),
    Case("fastrm-proxy-config-other-format", proxy_case(edit_json("proxy.json", lambda c: c.update(format="onnx"))), ("proxy.json is not a FastRM proxy config",)),
    Case("fastrm-proxy-weights-corrupt", proxy_case(lambda p: (p / "proxy.safetensors").write_bytes(b"\x00" * 64)), ("cannot read FastRM proxy weights", "proxy.safetensors")),
    Case("fastrm-proxy-weights-other-size", proxy_case(edit_json("proxy.json", lambda c: c.update(hidden_size=64))), ("proxy.safetensors do not fit its config", "hidden size 64")),
    Case("fastrm-proxy-other-grid", proxy_case(edit_json("proxy.json", lambda c: c.update(grid=[4, 4]))), ("proxy.safetensors do not fit its config",)),
    Case("fastrm-proxy-unknown-head", cli_case("run", "--method", "fastrm", "--param", "head=cnn"), ("method 'fastrm': head='cnn' is not one of ['attention', 'mlp']",)),
    Case("fastrm-proxy-other-model", proxy_case(None, model="tiny-random-llava"), ("was trained for model 'tiny-llava-easyvqa' with hidden size 128; model 'tiny-random-llava' has hidden size 64", "xbench fastrm train --model tiny-random-llava")),
]

CASES = CLI_CASES + SUITE_CASES + DATA_CASES + IMAGE_CASES + MODEL_CASES + FASTRM_PROXY_CASES


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    import xbench.plugins
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: corpus_plugins)
    monkeypatch.setattr(xbench.plugins, "default", lambda: corpus_plugins)
    monkeypatch.chdir(tmp_path)
    argv = case.make(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    # a run whose every sample failed (here: its one sample) exits 1 naming the first error
    expected_exit = 1 if case.record == "error" else case.exit
    assert code == expected_exit, err
    if expected_exit == 2:
        assert err.startswith(("xbench: error: ", "usage: xbench")), err
        for text in case.expect:
            assert text in err, f"{text!r} not in {err!r}"
        return
    if expected_exit == 1:
        assert "xbench: error: every sample failed; the first, " in err, err
        assert all(text in err for text in case.expect), err
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    if case.record == "error":
        for text in case.expect:
            assert text in record["error"], f"{text!r} not in {record['error']!r}"
    else:
        assert "error" not in record, record.get("error")
        assert record["grid"] == [8, 8] and np.isfinite(record["map"]).all()
        assert isinstance(record["answer"], str) and record["scores"]["accuracy"] in (0.0, 1.0)


def test_16_bit_grayscale_keeps_its_contrast():
    """PIL alone clips 16-bit values at 255 (a white image); to_rgb scales by 1/257 instead."""
    from xbench.api import to_rgb

    img = gradient16()
    assert img.mode.startswith("I")
    expected = np.round(np.asarray(img, dtype=np.float64) / 257.0)
    rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert (np.asarray(img.convert("RGB"))[..., 0] == 255).mean() > 0.99  # what the naive conversion gives


# ---- parameters (issue 17) ----
# Every parameter value is checked when the plugin is built, before the model loads and before
# any sample: an exit-2 one-line error naming the flag or plugin, the key, the value and what is
# accepted. Non-finite numbers are refused already when the command line is read.

ROLLOUT = ("run", "--method", "rollout", "--limit", "1", "--warmup", "0", "--no-progress", "--device", "cpu", "--out", "{tmp}/o")


def method_run(method: str, *extra: str) -> Callable[[Path], list[str]]:
    return cli_case("run", "--method", method, *RUN[3:], *extra)


def suite_method(table: str) -> Callable[[Path], list[str]]:
    return suite_case(VALID.replace("rollout = {}", f"rollout = {table}"))


PARAM_CASES = [
    Case("param-token-bogus", cli_case(*RUN, "--param", "token=bogus"), ("method 'raw_attention': token='bogus' is not one of ['mean', 'first', 'last']",)),
    Case("param-residual-infinity", cli_case(*ROLLOUT, "--param", "residual=Infinity"), ("--param residual: 'Infinity' is not a finite number (NaN and infinities are refused)",)),
    Case("param-residual-minus-infinity", cli_case(*ROLLOUT, "--param", "residual=-Infinity"), ("--param residual: '-Infinity' is not a finite number",)),
    Case("param-residual-overflow", cli_case(*ROLLOUT, "--param", "residual=1e999"), ("--param residual: '1e999' is not a finite number",)),
    Case("param-residual-out-of-range", cli_case(*ROLLOUT, "--param", "residual=1.5"), ("method 'rollout': residual=1.5 is not a finite number >= 0 and <= 1",)),
    Case("param-list-with-overflow", cli_case(*RUN, "--param", "token=[1e999]"), ("--param token: '[1e999]' holds a non-finite number",)),
    Case("param-list-with-nan", cli_case(*RUN, "--param", "token=[1, NaN]"), ("--param token: '[1, NaN]' holds a non-finite number (NaN and infinities are refused)",)),
    Case("metric-param-tau-nan", cli_case(*RUN, "--metric-param", "tau=NaN"), ("--metric-param tau: 'NaN' is not a finite number (NaN and infinities are refused)",)),
    Case("metric-param-tau-out-of-range", cli_case(*RUN, "--metric-param", "tau=1.5"), ("metric 'agreement_accuracy': tau=1.5 is not a finite number >= 0 and <= 1",)),
    Case("metric-param-steps-zero", cli_case(*RUN, "--metrics", "faithfulness", "--metric-param", "steps=0"), ("metric 'deletion_auc': steps=0 is not an integer >= 1",)),
    Case("metric-param-fill-bogus", cli_case(*RUN, "--metrics", "faithfulness", "--metric-param", "fill=blur"), ("metric 'deletion_auc': fill='blur' is not one of ['mean', 'zero']",)),
    Case("metric-param-typo", cli_case(*RUN, "--metric-param", "tua=0.3"), ("no selected metric takes parameter(s) ['tua'] (did you mean 'tau'?)",)),
    Case("param-typo", cli_case(*RUN, "--param", "tokn=first"), ("method 'raw_attention' has no parameter(s) ['tokn'] (did you mean 'token'?); it takes layer, token",)),
    Case("param-layer-wrong-type", cli_case(*RUN, "--param", "layer=top"), ("method 'raw_attention': layer='top' is not an integer",)),
    Case("param-layer-fraction", cli_case(*RUN, "--param", "layer=1.5"), ("method 'raw_attention': layer=1.5 is not an integer",)),
    Case("param-n-steps-zero", method_run("integrated_gradients", "--param", "n_steps=0"), ("method 'integrated_gradients': n_steps=0 is not an integer >= 1",)),
    Case("param-stdevs-negative", method_run("smoothgrad", "--param", "stdevs=-0.1"), ("method 'smoothgrad': stdevs=-0.1 is not a finite number >= 0",)),
    Case("param-relu-wrong-type", method_run("layer_gradcam", "--param", "relu=yes"), ("method 'layer_gradcam': relu='yes' is not true or false",)),
    Case("param-pool-on-grid-method", method_run("layer_gradcam", "--param", "pool=abs"), ("method 'layer_gradcam' has no parameter(s) ['pool']; it takes relu, target",)),
    Case("reference-param-bogus", cli_case(*RUN, "--reference-param", "scope=vit"), ("method 'gradient_relevancy': scope='vit' is not one of ['llm', 'all']",)),
    Case("task-param-flip-bogus", cli_case(*RUN, "--task-param", "flip=sideways"), ("task 'easyvqa': flip='sideways' is not one of ['none', 'horizontal', 'vertical', 'both']",)),
    Case("task-param-tolerance-out-of-range", cli_case(*RUN, "--task-param", "mask_tolerance=300"), ("task 'easyvqa': mask_tolerance=300 is not an integer >= 0 and <= 255",)),
    Case("task-param-prompt-bogus", cli_case(*RUN, "--task", "gqa", "--task-param", "prompt=Q:"), ("task 'gqa': prompt='Q:' is not a template name (llava15, plain) or a template containing '{question}'",)),
    Case("task-param-mask-from-bogus", cli_case(*RUN, "--task", "pope", "--task-param", "mask_from=polygon"), ("task 'pope': mask_from='polygon' is not one of ['segmentation', 'bbox']",)),
    # non-finite numbers anywhere in a suite are refused first, with their key path (run folders section)
    Case("suite-method-param-nan", suite_method("{residual = nan}"), ("suite.methods.rollout.residual is nan: a suite takes finite numbers only",)),
    Case("suite-method-param-inf", suite_method("{residual = inf}"), ("suite.methods.rollout.residual is inf: a suite takes finite numbers only",)),
    Case("suite-method-param-bogus-choice", suite_method('{token = "middle"}'), ("method 'rollout': token='middle' is not one of ['mean', 'first', 'last']",)),
]


class KeptOutput:
    """``capsys`` that keeps what :func:`test_bad_input` read, for more checks after it."""

    def __init__(self, capsys):
        self.capsys, self.err = capsys, None

    def readouterr(self):
        captured = self.capsys.readouterr()
        self.err = captured.err
        return captured


@pytest.mark.parametrize("case", PARAM_CASES, ids=[c.id for c in PARAM_CASES])
def test_bad_parameter_is_refused_before_the_work(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    assert case.exit == 2 and case.expect
    kept = KeptOutput(capsys)
    test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, kept)
    assert kept.err.startswith("xbench: error: ") and kept.err.count("\n") == 1, kept.err  # one line
    assert not list(tmp_path.rglob("samples.jsonl")), "a sample was processed before the refusal"
    assert not list(tmp_path.rglob("*.tmp"))


def test_parameter_case_ids_are_unique_across_the_corpus():
    assert len({c.id for c in CASES + PARAM_CASES}) == len(CASES) + len(PARAM_CASES)


# ---- outputs (issue 17) ----
# Leaderboards, reports and `xbench show` print text that came from runs: every format escapes
# it, and a summary or record file that is not what it should be is skipped with a warning
# naming it (or refused with a clear error when nothing is left). Each case builds run folders
# from summaries and records alone (no model), runs the command in-process and checks stdout,
# stderr and the exit code: ``warn`` -> exit 0 with ``xbench: warning:`` naming the file;
# ``escaped`` -> exit 0 and the output holds the escaped text, never the raw one; ``error`` ->
# exit 2 with one ``xbench: error:`` line.


def _out_summary(label: str = "rollout", **extra) -> dict:
    metric = {"value": 0.5, "n": 1, "category": "agreement", "higher_is_better": True, "ci95": [0.4, 0.6]}
    cost = {"value": 3.0, "n": 1, "category": "cost", "higher_is_better": False, "ci95": [2.0, 4.0]}
    return {"run_id": "r", "method": {"name": "rollout", "label": label, "params": {}},
            "task": {"name": "easyvqa", "split": "test", "data_hash": "h"}, "model": {"id": "tiny-random-llava"},
            "n_ok": 1, "metrics": {"agreement_f1": metric, "explain_ms_p50": cost}, **extra}


def _out_run(tmp: Path, name: str = "run", label: str = "rollout", records: bytes | None = None) -> Path:
    folder = tmp / "runs" / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_out_summary(label)))
    if records is not None:
        (folder / "samples.jsonl").write_bytes(records)
    return folder


_OUT_RECORD = json.dumps({"id": "s1", "question": "q", "gold": ["a"], "answer": "a", "map": [[0.0, 1.0], [0.5, 0.2]],
                          "metrics": {"agreement_f1": 0.5}, "scores": {"accuracy": 1.0}, "explain_ms": 3.0}) + "\n"
_OUT_FAILED = json.dumps({"id": "s2", "error": "boom", "stage": "explain"}) + "\n"


@dataclass(frozen=True)
class OutputCase:
    """``make(tmp) -> argv``; ``kind``: warn | escaped | error; ``expect``: substrings of stderr
    (warn, error, with ``{tmp}`` replaced) or of the output (escaped); ``absent``: never in the output."""

    id: str
    make: Callable[[Path], list[str]]
    kind: str
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()


def _lb_with(extra: Callable[[Path], None], *argv: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        _out_run(tmp)
        extra(tmp)
        return ["leaderboard", str(tmp / "runs"), *argv]

    return make


def _file(rel: str, content: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(content)

    return write


def _labelled(label: str, *argv: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        _out_run(tmp, label=label)
        return [a.replace("{tmp}", str(tmp)) for a in argv]

    return make


def _show(sample: str, records: bytes = (_OUT_RECORD + _OUT_FAILED).encode()) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return ["show", str(_out_run(tmp, records=records)), sample, "--output", str(tmp / "s.png")]

    return make


OUTPUT_CASES = [
    OutputCase("lb-foreign-summary", _lb_with(_file("runs/other/summary.json", b'{"loss": 0.1}')), "warn",
               ("xbench: warning: skipped {tmp}/runs/other/summary.json: not an xbench run summary (no 'method.name')",)),
    OutputCase("lb-summary-not-json", _lb_with(_file("runs/torn/summary.json", b'{"method": ')), "warn",
               ("xbench: warning: skipped {tmp}/runs/torn/summary.json: unreadable (JSONDecodeError",)),
    OutputCase("lb-summary-a-list", _lb_with(_file("runs/list/summary.json", b"[]")), "warn",
               ("skipped {tmp}/runs/list/summary.json: not an xbench run summary (not a JSON object)",)),
    OutputCase("lb-summary-metrics-not-a-table", _lb_with(_file("runs/m/summary.json",
               json.dumps(_out_summary(metrics=[1])).encode())), "warn",
               ("skipped {tmp}/runs/m/summary.json: not an xbench run summary (no 'metrics' table)",)),
    OutputCase("lb-records-damaged", lambda tmp: ["leaderboard", str(_out_run(tmp, records=b'{"id": 1\n' + _OUT_RECORD.encode()))],
               "warn", ("samples.jsonl line 1: not JSON", "set aside")),  # strict reading: the bad line only
    OutputCase("lb-only-foreign", lambda tmp: (_file("runs/x/summary.json", b"{}")(tmp), ["leaderboard", str(tmp / "runs")])[1],
               "error", ("xbench: error: no run summaries found under", "skipped {tmp}/runs/x/summary.json")),
    OutputCase("lb-markdown-pipe", _labelled("a|b", "leaderboard", "{tmp}/runs"), "escaped", (r"| a\|b ",), ("| a|b",)),
    OutputCase("lb-markdown-tag-and-link", _labelled("<img src=x>[y](z)", "leaderboard", "{tmp}/runs"), "escaped",
               (r"\<img src=x\>\[y\](z)",), ("| <img", "[y](z)")),
    OutputCase("lb-latex-input", _labelled(r"\input{/etc/passwd}", "leaderboard", "{tmp}/runs", "--format", "latex"),
               "escaped", (r"\textbackslash{}input\{/etc/passwd\}",), (r"\input{",)),
    OutputCase("lb-latex-specials", _labelled("50% & $x$ #1 ~^_", "leaderboard", "{tmp}/runs", "--format", "latex"),
               "escaped", (r"50\% \& \$x\$ \#1 \textasciitilde{}\textasciicircum{}\_",), ("50% &",)),
    OutputCase("lb-csv-formula", _labelled("=HYPERLINK(1)", "leaderboard", "{tmp}/runs", "--format", "csv"), "escaped",
               (",'=HYPERLINK(1),",), (",=HYPERLINK",)),
    OutputCase("lb-csv-plus-at-minus", _labelled("@cmd", "leaderboard", "{tmp}/runs", "--format", "csv"), "escaped",
               (",'@cmd,",), (",@cmd",)),
    OutputCase("lb-html-script", _labelled("<script>x</script>", "leaderboard", "{tmp}/runs", "--format", "html"),
               "escaped", ("&lt;script&gt;x&lt;/script&gt;",), ("<script>",)),
    OutputCase("lb-columns-no-match", _labelled("m", "leaderboard", "{tmp}/runs", "--columns", "nope*"), "error",
               ("xbench: error: no metric matches --columns 'nope*'",)),
    OutputCase("lb-sort-unknown", _labelled("m", "leaderboard", "{tmp}/runs", "--sort-by", "speed"), "error",
               ("xbench: error: cannot sort by 'speed'",)),
    OutputCase("report-dollar-label", _labelled(r"$\frac{$ $\undefined$", "report", "{tmp}/runs", "-o", "{tmp}/r.html"),
               "escaped", ("wrote",)),
    OutputCase("report-only-foreign", lambda tmp: (_file("runs/x/summary.json", b"[]")(tmp),
               ["report", str(tmp / "runs"), "-o", str(tmp / "r.html")])[1], "error",
               ("xbench: error: no xbench run summary found under", "skipped {tmp}/runs/x/summary.json")),
    OutputCase("show-unknown-sample", _show("s9"), "error",
               ("xbench: error: sample 's9' is not in", "(first ids: ['s1', 's2'])")),
    OutputCase("show-failed-sample", _show("s2"), "error",
               ("xbench: error: sample 's2' failed in this run (explain: boom)",)),
    OutputCase("show-not-a-run", lambda tmp: ["show", str(tmp), "s1", "-o", str(tmp / "s.png")], "error",
               ("xbench: error:", "is not an xbench run folder (no readable run summary.json)")),
]


def test_the_output_corpus_covers_every_format():
    assert len(OUTPUT_CASES) >= 20 and len({c.id for c in OUTPUT_CASES}) == len(OUTPUT_CASES)
    assert {c.id.split("-")[0] for c in OUTPUT_CASES} == {"lb", "report", "show"}


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c.id for c in OUTPUT_CASES])
def test_bad_output_input(case, tmp_path, monkeypatch, capsys):
    from xbench.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(case.make(tmp_path))
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    if case.id.startswith("report") and code == 0:
        out += (tmp_path / "r.html").read_text()
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == (2 if case.kind == "error" else 0), err
    where = out if case.kind == "escaped" else err
    for text in case.expect:
        assert text.replace("{tmp}", str(tmp_path)) in where, f"{text!r} not in {where[-2000:]!r}"
    for text in case.absent:
        assert text not in out, f"{text!r} printed unescaped"
    if case.kind == "warn":
        assert err.startswith("xbench: warning: ") and "| rollout" in out  # the rest of the leaderboard is there


# ---- runloop (issue 17) ----
RUNLOOP_CASES = [
    Case("cli-unknown-metric-preset", cli_case(*RUN, "--metrics", "defualt"), ("unknown metric 'defualt'. Did you mean 'default'?", "or a preset: ")),
    Case("suite-unknown-metric-preset", suite_case(VALID + 'metrics = ["faithfulnes"]\n'), ("unknown metric 'faithfulnes'. Did you mean 'faithfulness'?",)),
    Case("cli-preset-ok", cli_case(*RUN[:-1], "{tmp}/out", "--metrics", "localisation,sanity"), exit=0, record="ok"),
]


@pytest.mark.parametrize("case", RUNLOOP_CASES, ids=[c.id for c in RUNLOOP_CASES])
def test_bad_input_run_loop(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys)


# ---- fastrm (issue 17) ----
#: names looked up in the FastRM head, control and zoo tables: a did-you-mean, or what can be chosen

FASTRM_TABLE_CASES: list[Case] = [
    Case("fastrm-proxy-head-not-registered", proxy_case(edit_json("proxy.json", lambda c: c.update(head="atention"))), ("proxy.json: unknown FastRM head 'atention'. Did you mean 'attention'? Choices: attention, mlp.",)),
    Case("zoo-train-unknown-model", cli_case("zoo", "train", "tiny-llava-easyvq", "--out", "{tmp}/m"), ("unknown model 'tiny-llava-easyvq'. Did you mean 'tiny-llava-easyvqa'?",)),
    Case("zoo-train-model-without-trainer", cli_case("zoo", "train", "tiny-random-llava", "--out", "{tmp}/m"), ("zoo model 'tiny-random-llava' cannot be trained by xbench; trainable: ['tiny-llava-easyvqa']",)),
]  # fmt: skip


@pytest.mark.parametrize("case", FASTRM_TABLE_CASES, ids=[c.id for c in FASTRM_TABLE_CASES])
def test_bad_fastrm_table_input(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys)


def test_an_unknown_control_gets_a_did_you_mean():
    from types import SimpleNamespace

    from xbench.companions import build_control
    from xbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"unknown control 'randomised'\. Did you mean 'randomized'\?"):
        build_control(SimpleNamespace(control="randomised", seed=0), None, None)


# ---- run folders, records, sweeps (issue 17) ----
# A folder's identity (run.json) is checked on --resume, one process writes it at a time, an
# unwritable --out fails before the model loads, bad record lines are set aside with their
# number (the run resumes and explains those samples again), bad suites are refused before
# anything runs, an unreachable Ray address fails at once. (The damaged-records cases that
# used to abort a resume moved here: they now resume.)

_HELD_LOCKS: list[int] = []  # descriptors holding a run folder's lock for the "in use" case


def prior_run(tmp: Path) -> Path:
    """A finished one-sample run of raw_attention in ``tmp/out`` (its run.json and records)."""
    from xbench.cli import main

    assert main(["run", *PRIOR_RUN]) == 0
    return tmp / "out"


PRIOR_RUN = ("--method", "raw_attention", "--limit", "1", "--warmup", "0", "--no-progress", "--device", "cpu")


def resume_case(*changed: str, before: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    """``run --resume`` on a prior run's folder with ``changed`` options (later options win)."""

    def make(tmp: Path) -> list[str]:
        from xbench.cli import main

        out = tmp / "out"
        assert main(["run", *PRIOR_RUN, "--out", str(out)]) == 0
        if before is not None:
            before(out)
        return ["run", *PRIOR_RUN, "--limit", "2", "--out", str(out), "--resume", *changed]

    return make


def hold_lock(out: Path) -> None:
    import fcntl

    fd = os.open(out / ".xbench.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"pid 4242 on testhost since now\n", 0)
    _HELD_LOCKS.append(fd)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_case(make_address: Callable[[], str]) -> Callable[[Path], list[str]]:
    return lambda tmp: suite_case(VALID, "--executor", "ray", "--address", make_address())(tmp)


UNWRITABLE = "/sys/kernel"  # root may write anywhere else; sysfs refuses new files even to root
DIFFERENT = "was run with {}, this run asks for {}"
INTEGRITY_CASES = [
    Case("out-unwritable", cli_case(*RUN[:-1], UNWRITABLE), (f"cannot write in the run directory {UNWRITABLE}: Permission denied",)),
    Case("out-unwritable-parent", cli_case(*RUN[:-1], f"{UNWRITABLE}/xbench/out"), (f"cannot create the run directory {UNWRITABLE}/xbench/out:",)),
    Case("resume-other-method", resume_case("--method", "rollout"), (DIFFERENT.format("method 'raw_attention'", "'rollout'"),)),
    Case("resume-other-params", resume_case("--param", "layer=0"), (DIFFERENT.format("method params {'layer': -1, 'token': 'mean'}", "{'layer': 0, 'token': 'mean'}"),)),
    Case("resume-other-model", resume_case("--model", "tiny-random-llava"), (DIFFERENT.format("model 'tiny-llava-easyvqa'", "'tiny-random-llava'"), "model config hash '")),
    Case("resume-other-seed", resume_case("--seed", "5"), (DIFFERENT.format("seed 0", "5"),)),
    Case("resume-other-split", resume_case("--split", "train"), (DIFFERENT.format("split 'test'", "'train'"),)),
    Case("resume-other-task-param", resume_case("--task-param", "mask_tolerance=8"), ("was run with task params {",)),
    Case("resume-other-metrics", resume_case("--metrics", "pointing_game"), ("was run with metrics [", "this run asks for ['pointing_game']")),
    Case("resume-other-metric-param", resume_case("--metric-param", "tau=0.5"), ("was run with metric params {", "'tau': 0.5}")),
    Case("resume-other-reference", resume_case("--reference", "rollout"), (DIFFERENT.format("reference 'gradient_relevancy'", "'rollout'"),)),
    Case("resume-other-control", resume_case("--control", "randomized"), (DIFFERENT.format("control None", "'randomized'"),)),
    Case("resume-other-max-new-tokens", resume_case("--max-new-tokens", "2"), ("was run with max_new_tokens ", ", this run asks for 2")),
    Case("resume-other-dtype", resume_case("--dtype", "bfloat16"), (DIFFERENT.format("dtype 'float32'", "'bfloat16'"),)),
    Case("resume-no-identity", resume_case(before=lambda out: (out / "run.json").unlink()), ("holds records but no run.json", "nothing ties them to this run")),
    Case("resume-identity-corrupt", resume_case(before=lambda out: (out / "run.json").write_text("{")), ("cannot read the run identity", "run.json")),
    Case("resume-identity-foreign", resume_case(before=lambda out: (out / "run.json").write_text("[]")), ("run.json is not an xbench run identity",)),
    Case("resume-folder-in-use", resume_case(before=hold_lock), ("is in use by another xbench run (pid 4242 on testhost since now)", "one process writes a run folder at a time")),
    Case("suite-inf", suite_case(VALID.replace("rollout = {}", "rollout = {residual = inf}")), ("suite.methods.rollout.residual is inf: a suite takes finite numbers only",)),
    Case("suite-negative-inf", suite_case(VALID.replace("limit = 1", "limit = -inf")), ("suite.run.limit is -inf",)),
    Case("suite-nan", suite_case(VALID.replace("rollout = {}", "rollout = [{}, {residual = nan}]")), ("suite.methods.rollout[1].residual is nan",)),
    Case("suite-date", suite_case(VALID.replace("rollout = {}", "rollout = {token = 1979-05-27}")), ("suite.methods.rollout.token is the TOML date/time 1979-05-27",)),
    Case("suite-datetime-seed", suite_case(VALID.replace("seeds = [0]", "seeds = [1979-05-27T07:32:00Z]")), ("suite.seeds[0] is the TOML date/time 1979-05-27T07:32:00+00:00",)),
    Case("suite-time", suite_case(VALID + "limit_time = 07:32:00\n"), ("suite.run.limit_time is the TOML date/time 07:32:00",)),
    Case("suite-huge-grid", suite_case(VALID.replace("seeds = [0]", "seeds = [" + ", ".join(map(str, range(1000))) + "]").replace("rollout = {}", "rollout = [" + ", ".join(["{}"] * 1000) + "]")), ("suite expands to 1000000 cells, more than the limit of 10000",)),
    Case("sweep-ray-unreachable", ray_case(lambda: f"127.0.0.1:{closed_port()}"), ("cannot reach Ray at '127.0.0.1:", "Connection refused (within 10 s)")),
    Case("sweep-ray-unreachable-client", ray_case(lambda: f"ray://127.0.0.1:{closed_port()}"), ("cannot reach Ray at 'ray://127.0.0.1:", "Connection refused")),
]


@pytest.mark.parametrize("case", INTEGRITY_CASES, ids=[c.id for c in INTEGRITY_CASES])
def test_run_folder_and_suite_input(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    if case.id.startswith("out-unwritable") and not _refuses_new_files(Path(UNWRITABLE)):
        pytest.skip(f"{UNWRITABLE} is not an unwritable folder here")
    import xbench.runner

    if case.id.startswith("out-"):
        monkeypatch.setattr(xbench.runner, "load_vlm", _refuse_loading)
    try:
        test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys)
    finally:
        while _HELD_LOCKS:
            os.close(_HELD_LOCKS.pop())


def _refuses_new_files(folder: Path) -> bool:
    try:
        os.close(os.open(folder / ".xbench-probe", os.O_CREAT | os.O_WRONLY))
    except OSError:
        return folder.is_dir()
    os.unlink(folder / ".xbench-probe")
    return False


def _refuse_loading(*args, **kwargs):
    raise AssertionError("the model loaded before the output folder was checked")


BAD_RECORD_LINES = [
    (b"{garbage\n", "line 2: not JSON"),
    (b"[1]\n", "line 2: a JSON list, not a record object"),
    (b'{"id": 3}\n', "line 2: 'id' is 3, not a string"),
    (b'{"id": "q", "metrics": 1}\n', "line 2: field 'metrics' is a number, expected dict"),
    (b'{"id": "q", "explain_ms": Infinity}\n', "line 2: not JSON (non-finite number Infinity"),
]


@pytest.mark.parametrize("line, reason", BAD_RECORD_LINES, ids=[r.split(": ", 1)[1][:20] for _, r in BAD_RECORD_LINES])
def test_bad_record_lines_are_reported_and_the_run_resumes(line, reason, corpus_plugins, tmp_path, monkeypatch, capsys):
    """A malformed line in samples.jsonl: reported with its number and set aside; --resume
    goes on (exit 0) and explains the samples it does not hold."""
    import xbench.plugins
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: corpus_plugins)
    monkeypatch.setattr(xbench.plugins, "default", lambda: corpus_plugins)
    out = tmp_path / "out"
    assert main(["run", *PRIOR_RUN, "--out", str(out)]) == 0
    with open(out / "samples.jsonl", "ab") as fh:
        fh.write(line)
    capsys.readouterr()
    assert main(["run", *PRIOR_RUN, "--limit", "3", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert f"xbench: warning: {out / 'samples.jsonl'} {reason}" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_records"] == 3


def test_run_folder_case_ids_are_unique_across_the_corpus():
    every = CASES + PARAM_CASES + INTEGRITY_CASES
    assert len({c.id for c in every}) == len(every)


# ---- the end-of-run line (issue 17) ----
def test_a_partly_failed_run_exits_0_and_names_its_most_common_error(corpus_plugins, tmp_path, monkeypatch, capsys):
    """Two of three samples fail the same way: exit 0 (the run goes on), the end line counts them and
    names the most common error; a run whose every sample fails exits 1 (the corpus cases above)."""
    import xbench.plugins
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: corpus_plugins)
    monkeypatch.setattr(xbench.plugins, "default", lambda: corpus_plugins)
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.png").write_bytes(png_bytes(shape_image()))
    lines = [{"id": "q1", "image": "missing.png", "question": "what colour is the shape?", "answer": "red"},
             {"id": "q2", "image": "good.png", "question": "what colour is the shape?", "answer": "red"},
             {"id": "q3", "image": "missing.png", "question": "what shape is it?", "answer": "circle"}]
    (data / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in lines))
    assert main(run_args(data, tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "1 samples explained, 2 errors (most common, 2x: image file not found: " in out and "missing.png" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["error_digest"]["first_id"] == "q1" and summary["error_digest"]["most_common_count"] == 2


# ---- tasks: data read strictly, official layouts (issue 17, issue 19) ----
#
# Official-format fixtures of VQA v2, GQA, POPE and easy-vqa are written to a temporary folder and
# run through ``xbench run`` with each task. A case with ``record="error"`` expects exactly one
# error record holding every ``expect`` text (the other records, if any, are normal); "ok" expects
# only normal records; "mask_error" expects normal records, one noting the mask error in its meta.

import signal  # noqa: E402

from xbench.datafiles import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS  # noqa: E402


def task_args(task: str, data: Path, out: Path, limit: int, *extra: str) -> list[str]:
    return ["run", "--method", "raw_attention", "--task", task, "--data-dir", str(data), "--out", str(out),
            "--limit", str(limit), "--warmup", "0", "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def write_text(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shape_image()))


VQA_LAYOUTS = {  # (questions, annotations, image folder) of each layout, for split val2014
    "flat": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014"),
    "official": ("Questions/v2_OpenEnded_mscoco_val2014_questions.json", "Annotations/v2_mscoco_val2014_annotations.json",
                 "Images/mscoco/val2014"),
}  # fmt: skip


def vqa_case(edit=None, raw=None, layout="flat", extra=(), images=(1,)) -> Callable[[Path], list[str]]:
    """VQA v2 files for one question (id 1001 on image 1); ``edit(questions, annotations)`` changes
    the entries, ``raw(text)`` the questions file's text."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        questions = [{"image_id": 1, "question": "What colour is the shape?", "question_id": 1001}]
        answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        annotations = [{"question_type": "what color", "answers": answers, "image_id": 1, "answer_type": "other", "question_id": 1001}]
        if edit:
            edit(questions, annotations)
        qname, aname, folder = VQA_LAYOUTS[layout]
        text = json.dumps({"info": {}, "data_subtype": "val2014", "questions": questions})
        write_text(data / qname, raw(text) if raw else text)
        write_text(data / aname, json.dumps({"info": {}, "data_subtype": "val2014", "annotations": annotations}))
        for image_id in images:
            write_image(data / folder / f"COCO_val2014_{image_id:012d}.jpg")
        return task_args("vqa_v2", data, tmp / "out", len(questions), *extra)

    return make


def gqa_question(image_id="img1", text="What colour is the shape?", answer="red") -> dict:
    return {"imageId": image_id, "question": text, "answer": answer, "isBalanced": True, "types": {"structural": "query"},
            "annotations": {"question": {"3": "o1"}, "answer": {}, "fullAnswer": {}}}  # fmt: skip


def gqa_case(questions=None, raw=None, scenes=None, layout="", extra=(), outside_image=False) -> Callable[[Path], list[str]]:
    """GQA balanced questions (default: one question q1 on img1) under ``layout`` (``questions1.2/``
    or flat), images in ``images/``, optionally scene graphs in ``sceneGraphs/``."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        qs = questions if questions is not None else {"q1": gqa_question()}
        text = json.dumps(qs)
        write_text(data / layout / "testdev_balanced_questions.json", raw(text) if raw else text)
        write_image(data / "images" / "img1.jpg")
        if outside_image:
            write_image(tmp / "elsewhere.jpg")
        if scenes is not None:
            write_text(data / "sceneGraphs" / "testdev_sceneGraphs.json", scenes)
        return task_args("gqa", data, tmp / "out", len(qs), *extra)

    return make


POPE_LINE = {"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a shape in the image?", "label": "yes"}


def pope_case(lines=(POPE_LINE,), raw=None, files=("coco_pope_random.json",), images="val2014", extra=()) -> Callable[[Path], list[str]]:
    """POPE question files ``files`` (relative to the data folder) holding ``lines`` as JSON lines
    (or ``raw`` text), and their images in ``images/``."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        text = raw if raw is not None else "".join(json.dumps(line) + "\n" for line in lines)
        for name in files:
            write_text(data / name, text)
        (data / images).mkdir(parents=True, exist_ok=True)
        for line in lines:
            if isinstance(line.get("image"), str) and not line["image"].startswith(("/", "..")):
                write_image(data / images / line["image"])
        return task_args("pope", data, tmp / "out", max(len(lines), 1), *extra)

    return make


def fifo_case(make_args: Callable[[Path], list[str]], name: str) -> Callable[[Path], list[str]]:
    """``make_args``'s files with ``data/name`` replaced by a named pipe that nothing ever writes to."""

    def make(tmp: Path) -> list[str]:
        argv = make_args(tmp)
        path = tmp / "data" / name
        path.unlink()
        os.mkfifo(path)
        return argv

    return make


def image_path_case(name: str, extra_file: str | None = None) -> Callable[[Path], list[str]]:
    """The test task asked about the image path ``name`` (optionally writing ``extra_file`` first)."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        data.mkdir()
        if extra_file:
            write_image(tmp / extra_file)
        (data / "questions.jsonl").write_text(json.dumps({"id": "q1", "image": name, "question": "what colour?", "answer": "red"}) + "\n")
        return run_args(data, tmp / "out", "--limit", "1")

    return make


def real_strip_png(width: int, height: int) -> bytes:
    """A real (fully decodable) ``width x height`` PNG: a few hundred bytes for a 30000x1 strip."""
    return png_bytes(Image.new("RGB", (width, height), (200, 30, 30)))


def replaced(old: str, new: str) -> Callable[[str], str]:
    """A ``raw`` edit: the first ``old`` in the file's text becomes ``new`` (JSON that json.dumps cannot write)."""
    return lambda t: t.replace(old, new, 1)


def set_field(index: int, key: str, value) -> Callable[[list, list], None]:
    return lambda qs, anns: qs[index].__setitem__(key, value)


TWO_POPE = (POPE_LINE, {**POPE_LINE, "question_id": "1", "text": "Is there a cat in the image?", "label": "no"})
SEEM = "output/seem/aokvqa/aokvqa_pope_seem_random.json"

TASK_DATA_CASES = [
    # VQA v2: ids and values as the file means them
    Case("vqa-image-id-float", vqa_case(set_field(0, "image_id", 1.9)), ("questions[0]: image_id 1.9 (a float) is not an integer",), exit=0, record="error"),
    Case("vqa-image-id-integral-float", vqa_case(set_field(0, "image_id", 1.0)), ("image_id 1.0 (a float) is not an integer",), exit=0, record="error"),
    Case("vqa-image-id-1e999", vqa_case(raw=replaced('"image_id": 1,', '"image_id": 1e999,')), ("image_id 1e999 (not a finite number) is not an integer",), exit=0, record="error"),
    Case("vqa-image-id-nan", vqa_case(raw=replaced('"image_id": 1,', '"image_id": NaN,')), ("image_id NaN (not a finite number) is not an integer",), exit=0, record="error"),
    Case("vqa-question-null", vqa_case(set_field(0, "question", None)), ("v2_OpenEnded_mscoco_val2014_questions.json: questions[0]: question null is not a text",), exit=0, record="error"),
    Case("vqa-question-id-string", vqa_case(set_field(0, "question_id", "1001")), ("question_id '1001' (a string) is not an integer",), exit=0, record="error"),
    Case("vqa-question-missing-field", vqa_case(lambda qs, anns: qs[0].pop("image_id")), ("questions[0] lacks image_id",), exit=0, record="error"),
    Case("vqa-question-id-repeated", vqa_case(lambda qs, anns: qs.append(dict(qs[0]))), ("questions[1] repeats question_id 1001 of questions[0]",), exit=0, record="error"),
    Case("vqa-annotated-twice", vqa_case(lambda qs, anns: anns.append({**anns[0], "answers": anns[0]["answers"][:1]})), ("question_id 1001 is annotated 2 times",), exit=0, record="error"),
    Case("vqa-answer-not-text", vqa_case(lambda qs, anns: anns[0]["answers"][3].__setitem__("answer", None)), ("question_id 1001 has no usable human answers (answers[3] is",), exit=0, record="error"),
    Case("vqa-repeated-key", vqa_case(raw=replaced('"question": ', '"question": "Which?", "question": ')), ("v2_OpenEnded_mscoco_val2014_questions.json' repeats the key 'question' in one object",)),
    Case("vqa-questions-named-pipe", fifo_case(vqa_case(), "v2_OpenEnded_mscoco_val2014_questions.json"), ("not a regular file (a named pipe)",)),
    # VQA v2 layouts (issue 19)
    Case("vqa-official-api-layout", vqa_case(layout="official"), exit=0, record="ok"),
    Case("vqa-missing-lists-layouts", cli_case(*RUN, "--task", "vqa_v2", "--data-dir", "{tmp}"),
         ("no questions file for split 'val2014' in", "/vqa_v2'; searched v2_OpenEnded_mscoco_val2014_questions.json (flat), "
          "Questions/v2_OpenEnded_mscoco_val2014_questions.json (official VQA API) (xbench never downloads")),  # fmt: skip
    Case("vqa-two-layouts-ambiguous", lambda tmp: [vqa_case(layout="official")(tmp), vqa_case()(tmp)][1],
         ("found 2 questions files for split 'val2014'", "choose one with --task-param questions_file=PATH")),  # fmt: skip
    Case("vqa-image-dir-outside", vqa_case(extra=("--task-param", "image_dir=../elsewhere")), ("image_dir", "lies outside the data folder", "allow_outside_data_dir=true")),
    Case("vqa-image-dir-outside-allowed", lambda tmp: [write_image(tmp / "elsewhere" / "COCO_val2014_000000000001.jpg"),
         vqa_case(extra=("--task-param", "image_dir=../elsewhere", "--task-param", "allow_outside_data_dir=true"))(tmp)][1], exit=0, record="ok"),  # fmt: skip
    # GQA
    Case("gqa-repeated-question-key", gqa_case(raw=lambda t: t[:-1] + ', "q1": ' + json.dumps(gqa_question(answer="blue")) + "}"), ("testdev_balanced_questions.json' repeats the key 'q1' in one object",)),
    Case("gqa-image-id-climbs-out", gqa_case({"q1": gqa_question(image_id="../../elsewhere")}), ("question q1: image path '../../elsewhere.jpg' climbs out of the data folder", "allow_outside_data_dir=true"), exit=0, record="error"),
    Case("gqa-image-id-climbs-out-allowed", gqa_case({"q1": gqa_question(image_id="../../elsewhere")}, outside_image=True, extra=("--task-param", "allow_outside_data_dir=true")), exit=0, record="ok"),
    Case("gqa-image-id-absolute", gqa_case({"q1": gqa_question(image_id="/etc/hostname")}), ("image path '/etc/hostname.jpg' is an absolute path, outside the data folder",), exit=0, record="error"),
    Case("gqa-image-id-number", gqa_case({"q1": gqa_question(image_id=7)}), ("question q1: imageId 7 (an integer) is not a string",), exit=0, record="error"),
    Case("gqa-question-null", gqa_case({"q1": gqa_question(text=None)}), ("question q1: question null is not a text",), exit=0, record="error"),
    Case("gqa-answer-nan", gqa_case(raw=replaced('"answer": "red"', '"answer": NaN')), ("question q1 has no answer (NaN (not a finite number))",), exit=0, record="error"),
    Case("gqa-questions12-layout-with-scene-graphs", gqa_case(layout="questions1.2", scenes=json.dumps({"img1": {"width": 64, "height": 64, "objects": {"o1": {"name": "shape", "x": 16, "y": 16, "w": 32, "h": 32}}}})), exit=0, record="ok"),
    Case("gqa-scene-box-nan", gqa_case(scenes='{"img1": {"width": 64, "height": 64, "objects": {"o1": {"name": "shape", "x": NaN, "y": 1, "w": 2, "h": 3}}}}'), ("testdev_sceneGraphs.json: image img1 object o1 has box (NaN, 1, 2, 3), not four finite numbers",), exit=0, record="mask_error"),
    Case("gqa-missing-lists-layouts", cli_case(*RUN, "--task", "gqa", "--data-dir", "{tmp}"),
         ("no questions file for split 'testdev' in", "/gqa'; searched testdev_balanced_questions.json (flat), questions1.2/testdev_balanced_questions.json (questions1.2 download)")),  # fmt: skip
    # POPE
    Case("pope-ids-1-and-string-1-collide", pope_case(TWO_POPE), ("coco_pope_random.json:2: question_id '1' (a string) and 1 (an integer) on line 1 would both be sample '1'; refused",), exit=0, record="error"),
    Case("pope-question-id-float", pope_case([{**POPE_LINE, "question_id": 1.5}]), ("coco_pope_random.json:1: question_id 1.5 (a float) is neither an integer nor a non-empty string",), exit=0, record="error"),
    Case("pope-question-id-nan", pope_case(raw=json.dumps(POPE_LINE).replace('"question_id": 1', '"question_id": NaN') + "\n"), ("question_id NaN (not a finite number) is neither an integer",), exit=0, record="error"),
    Case("pope-text-null", pope_case([{**POPE_LINE, "text": None}]), ("coco_pope_random.json:1: text null is not a text",), exit=0, record="error"),
    Case("pope-field-missing", pope_case([{k: v for k, v in POPE_LINE.items() if k != "label"}]), ("expected an object with question_id, image, text, label (missing label)",), exit=0, record="error"),
    Case("pope-repeated-key-in-line", pope_case([POPE_LINE, {**POPE_LINE, "question_id": 2}], raw=json.dumps(POPE_LINE)[:-1] + ', "label": "no"}\n' + json.dumps({**POPE_LINE, "question_id": 2})), ("coco_pope_random.json:1: repeats the key 'label' in one object",), exit=0, record="error"),
    Case("pope-image-absolute", pope_case([{**POPE_LINE, "image": "/etc/hostname"}]), ("image path '/etc/hostname' is an absolute path, outside the data folder",), exit=0, record="error"),
    Case("pope-image-climbs-out", pope_case([{**POPE_LINE, "image": "../../x.jpg"}]), ("image path '../../x.jpg' climbs out of the data folder",), exit=0, record="error"),
    Case("pope-aokvqa-seem-array", pope_case(raw=json.dumps([POPE_LINE]), files=(SEEM,)), exit=0, record="ok"),
    Case("pope-gqa-source-images", pope_case([{**POPE_LINE, "image": "2354786.jpg"}], files=("gqa/gqa_pope_random.json",), images="images"), exit=0, record="ok"),
    Case("pope-two-sources-ambiguous", pope_case(files=("coco_pope_random.json", "output/gqa/gqa_pope_random.json")),
         ("question files for split 'random' of 2 source datasets were found", "(coco, flat)", "(gqa, POPE repository)", "choose one with --task-param source=coco|gqa")),  # fmt: skip
    Case("pope-two-sources-chosen", pope_case(files=("coco_pope_random.json", "output/gqa/gqa_pope_random.json"), extra=("--task-param", "source=coco")), exit=0, record="ok"),
    Case("pope-missing-lists-layouts", cli_case(*RUN, "--task", "pope", "--data-dir", "{tmp}"),
         ("no POPE questions file for split 'random' in", "/pope'; searched coco_pope_random.json (coco, flat), coco/coco_pope_random.json (coco, coco/)",
          "output/seem/aokvqa/aokvqa_pope_seem_random.json (aokvqa, POPE repository)", "output/gqa/gqa_pope_random.json (gqa, POPE repository)")),  # fmt: skip
    Case("pope-questions-named-pipe", fifo_case(pope_case(), "coco_pope_random.json"), ("cannot read POPE questions", "not a regular file (a named pipe)")),
    # the test task: images and their paths
    Case("image-named-pipe", fifo_case(image_case(lambda: png_bytes(shape_image())), "img.png"), ("cannot read image", "img.png: not a regular file (a named pipe)"), exit=0, record="error"),
    Case("image-strip-30000x1", image_case(lambda: real_strip_png(30000, 1)), ("img.png refused: 30000x1 has an aspect ratio of 30000:1", f"above the limit of {MAX_ASPECT_RATIO}:1"), exit=0, record="error"),
    Case("image-tall-strip", image_case(lambda: real_strip_png(2, 2000)), ("img.png refused: 2x2000 has an aspect ratio of 1000:1",), exit=0, record="error"),
    Case("image-over-pixel-budget", image_case(lambda: png_claiming_size(8000, 6000)), ("img.png refused as too large: 8000x6000 = 48000000 pixels exceeds limit of", str(MAX_IMAGE_PIXELS)), exit=0, record="error"),
    Case("image-path-climbs-out", image_path_case("../outside.png", extra_file="outside.png"), ("image path '../outside.png' climbs out of the data folder",), exit=0, record="error"),
    Case("image-path-absolute", image_path_case("/etc/hostname"), ("image path '/etc/hostname' is an absolute path",), exit=0, record="error"),
]


def write_easyvqa(folder: Path, questions: str, images=("0.png",)) -> Path:
    """An easy-vqa package data folder holding the test split's ``questions`` (JSON text) and ``images``."""
    write_text(folder / "test" / "questions.json", questions)
    for name in images:
        write_image(folder / "test" / "images" / name)
    return folder


EASYVQA_CASES = [
    Case("easyvqa-image-id-float", lambda tmp: '[["what colour is the shape?", "red", 0.9]]', ("easy-vqa test questions.json [0]: image id 0.9 (a float) is not an integer",), exit=0, record="error"),
    Case("easyvqa-image-id-boolean", lambda tmp: '[["what colour is the shape?", "red", false]]', ("image id False (a boolean) is not an integer",), exit=0, record="error"),
    Case("easyvqa-image-id-infinity", lambda tmp: '[["what colour is the shape?", "red", Infinity]]', ("image id Infinity (not a finite number) is not an integer",), exit=0, record="error"),
    Case("easyvqa-question-null", lambda tmp: '[[null, "red", 0]]', ("easy-vqa test questions.json [0]: question null is not a text",), exit=0, record="error"),
    Case("easyvqa-not-a-triple", lambda tmp: '[["what colour is the shape?", "red"]]', ("[0]: is not a [question, answer, image id] triple",), exit=0, record="error"),
    Case("easyvqa-valid-copy", lambda tmp: '[["what colour is the shape?", "red", 0]]', exit=0, record="ok"),
]
EASYVQA_COLLIDING = Case("easyvqa-images-collide", lambda tmp: '[["what colour is the shape?", "red", 1]]', ("easy-vqa images '01.png' and '1.png'", "are both image 1"))


def test_task_data_corpus_is_large_and_ids_unique():
    ids = [c.id for c in CASES + PARAM_CASES + TASK_DATA_CASES + EASYVQA_CASES + [EASYVQA_COLLIDING]]
    assert len(TASK_DATA_CASES) + len(EASYVQA_CASES) + 1 >= 20
    assert len(set(ids)) == len(ids)


def check_task_case(case, argv, tmp_path, capsys) -> None:
    """Run ``argv`` in-process (within 300 s: a named pipe must not hang it) and check ``case``."""
    from xbench.cli import main

    def hung(signum, frame):
        raise TimeoutError(f"case {case.id} did not finish within 300 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if case.exit:
        assert code == case.exit, err
        assert err.startswith("xbench: error: ") and err.count("\n") == 1, err
        for text in case.expect:
            assert text in err, f"{text!r} not in {err!r}"
        return
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    all_failed = bool(records) and len(errors) == len(records)
    assert code == (1 if all_failed else 0), err  # a run whose every sample failed exits 1
    assert ("xbench: error: every sample failed; the first, " in err) == all_failed, err
    if case.record == "error":
        assert len(errors) == 1, records
        for text in case.expect:
            assert text in errors[0]["error"], f"{text!r} not in {errors[0]['error']!r}"
    else:
        assert records and not errors, [r.get("error") for r in errors]
        noted = [r["meta"].get("mask_error", "") for r in records]
        if case.record == "mask_error":
            assert any(all(text in n for text in case.expect) for n in noted), noted
        else:
            assert not any(noted), noted


@pytest.fixture
def corpus_cli(corpus_plugins, monkeypatch, tmp_path):
    import xbench.plugins
    import xbench.runner

    monkeypatch.setattr(xbench.runner, "default", lambda: corpus_plugins)
    monkeypatch.setattr(xbench.plugins, "default", lambda: corpus_plugins)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("case", TASK_DATA_CASES, ids=[c.id for c in TASK_DATA_CASES])
def test_task_data(case, corpus_cli, tmp_path, capsys):
    check_task_case(case, case.make(tmp_path), tmp_path, capsys)


@pytest.mark.parametrize("case", EASYVQA_CASES + [EASYVQA_COLLIDING], ids=[c.id for c in EASYVQA_CASES + [EASYVQA_COLLIDING]])
def test_easyvqa_data(case, corpus_cli, tmp_path, monkeypatch, capsys):
    """easy-vqa reads the package's files; here a copy with one bad entry stands in for them."""
    import xbench.tasks.easyvqa

    images = ("01.png", "1.png") if case is EASYVQA_COLLIDING else ("0.png",)
    folder = write_easyvqa(tmp_path / "package-data", case.make(tmp_path), images)
    monkeypatch.setattr(xbench.tasks.easyvqa, "package_folder", lambda: folder)
    argv = ["run", "--method", "raw_attention", "--out", str(tmp_path / "out"), "--limit", "1", "--warmup", "0",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    check_task_case(case, argv, tmp_path, capsys)


# ---- contract: values that need the model, optional dependencies, prompt length (issue 17) ----
# Values checked against the loaded model (Method.check, called once right after loading) are
# refused before the first sample; a prompt that does not fit the context window is a per-sample
# error naming the sample and both lengths; a missing optional dependency is refused at
# construction with the install command.


def long_question_case(words: int, *extra: str) -> Callable[[Path], list[str]]:
    """One question of ``words`` words about a valid image (``extra``: more ``run`` options)."""

    def make(tmp: Path) -> list[str]:
        data = tmp / "data"
        data.mkdir()
        (data / "img.png").write_bytes(png_bytes(shape_image()))
        question = " ".join(["colour"] * words) + "?"
        (data / "questions.jsonl").write_text(json.dumps({"id": "q1", "image": "img.png", "question": question, "answer": "red"}) + "\n")
        return run_args(data, tmp / "out", "--limit", "1", *extra)

    return make


CONTEXT = "does not fit the context window of model 'tiny-llava-easyvqa' (256 tokens)"  # the default model

CONTRACT_CASES = [
    Case("contract-layer-past-the-last", cli_case(*RUN, "--param", "layer=2"), ("method 'raw_attention': layer=2 is not a layer of model 'tiny-llava-easyvqa', which has 2 language-model layers (use -2..1)",)),
    Case("contract-layer-before-the-first", cli_case(*RUN, "--param", "layer=-3"), ("method 'raw_attention': layer=-3 is not a layer of model",)),
    Case("contract-layer-far-out", cli_case(*RUN, "--param", "layer=1000000"), ("layer=1000000 is not a layer of model 'tiny-llava-easyvqa'",)),
    Case("contract-prompt-too-long", long_question_case(400), ("generation failed: sample 'q1': its prompt of", "plus up to 8 answer tokens", CONTEXT), exit=0, record="error"),
    Case("contract-prompt-leaves-no-room-to-answer", long_question_case(1, "--max-new-tokens", "250"), ("sample 'q1': its prompt of", "plus up to 250 answer tokens", CONTEXT), exit=0, record="error"),
    Case("contract-prompt-fits", long_question_case(100), exit=0, record="ok"),
    Case("contract-scope-all-one-layer-pool", model_case(edit_json("config.json", lambda c: c.update(vision_feature_layer=[-1]))), exit=0, record="ok"),
]


@pytest.mark.parametrize("case", CONTRACT_CASES, ids=[c.id for c in CONTRACT_CASES])
def test_contract_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys):
    test_bad_input(case, corpus_plugins, tmp_path, monkeypatch, capsys)


MISSING_CAPTUM = Case("contract-captum-missing", cli_case("run", "--method", "saliency", "--limit", "1", "--device", "cpu"),
                      ("method 'saliency' needs captum, which is not installed: pip install 'xbench[captum]'",))  # fmt: skip


def test_missing_optional_dependency_is_refused_with_the_install_command(corpus_plugins, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # what an install without the extra looks like to import
    test_bad_input(MISSING_CAPTUM, corpus_plugins, tmp_path, monkeypatch, capsys)
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_scope_all_on_features_pooled_from_several_layers_is_refused_before_the_work(plugins, tiny_vlm, monkeypatch):
    from xbench.errors import ParameterError

    method = plugins.registries.methods.get("gradient_relevancy")(scope="all")
    method.check(tiny_vlm)  # one layer: fine
    monkeypatch.setattr(tiny_vlm.model.config, "vision_feature_layer", [-1, -2])
    with pytest.raises(ParameterError, match=r"gradient_relevancy: scope='all' cannot be followed on this model: .*several vision layers \(vision_feature_layer=\[-1, -2\]\)"):
        method.check(tiny_vlm)
    plugins.registries.methods.get("gradient_relevancy")(scope="llm").check(tiny_vlm)  # the LM-only scope still runs


def test_a_too_long_prompt_fails_alone_in_its_batch(corpus_plugins, tmp_path, monkeypatch):
    """Two samples in one batch, one too long: it becomes an error record, the other is explained."""
    import xbench.runner
    from xbench.cli import main

    monkeypatch.setattr(xbench.runner, "default", lambda: corpus_plugins)
    data = tmp_path / "data"
    data.mkdir()
    (data / "img.png").write_bytes(png_bytes(shape_image()))
    lines = [{"id": "short", "image": "img.png", "question": "what colour is the shape?", "answer": "red"},
             {"id": "long", "image": "img.png", "question": "colour " * 400, "answer": "red"}]  # fmt: skip
    (data / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in lines))
    assert main(run_args(data, tmp_path / "out", "--batch-size", "2")) == 0
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "samples.jsonl").read_text().splitlines())}
    assert "error" not in records["short"] and records["short"]["grid"] == [8, 8]
    assert records["long"]["error"].startswith("generation failed: sample 'long': its prompt of") and CONTEXT in records["long"]["error"]
