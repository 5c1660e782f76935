"""FastRM's label store: bytes per sample, dtypes, ragged grids, strict reading, streaming
training, online == stored, heads over grids that differ per image."""

import json
import math

import numpy as np
import pytest
import torch

from xbench.errors import DataError, ParameterError
from xbench.fastrm.labels import LabelSet, build_labels
from xbench.fastrm.labelset import open_store, store_figures
from xbench.fastrm.store import FileShard, Row, ShardWriter
from xbench.fastrm.train import RowSource, TrainConfig, train_proxy, training_batches

SHORT = {"max_new_tokens": 2}


@pytest.fixture(scope="module")
def reference(plugins):
    return plugins.registries.methods.get("gradient_relevancy")()


@pytest.fixture(scope="module")
def train_task(plugins):
    return plugins.registries.tasks.get("easyvqa")("train")


def _rows(n, grids, d=8, k=(1, 3), dtype=torch.float32, seed=0, perturbed=False):
    """Synthetic rows with the given map shapes (cycled) and 1..3 answer tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        shape = grids[i % len(grids)]
        cells = math.prod(shape)
        m = torch.rand(cells, generator=g).numpy()
        rows.append(Row(f"s{i}", i, torch.randn(cells, d, generator=g).to(dtype),
                        torch.randn(k[0] + i % (k[1] - k[0] + 1), d, generator=g).to(dtype), m, shape,
                        float(i % 2), {"kind": "a" if i % 3 else "b"},
                        (m + 0.01).astype(np.float32) if perturbed else None))  # fmt: skip
    return rows


def _write(tmp_path, rows, shard_bytes=1, dtype=torch.float32, spec=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "spec.json").write_text(json.dumps(spec or {"model": {"hidden_size": rows[0].patches.shape[1]}}))
    writer = ShardWriter(tmp_path, dtype, 0, 0, shard_bytes)
    for r in rows:
        writer.add([r], [], r.position + 1)
    return writer.close()


# --------------------------------------------------------------------------- bytes and dtype


@pytest.mark.parametrize("dtype,size", [("bfloat16", 2), ("float32", 4)])
def test_bytes_per_sample_follow_the_formula(tiny_vlm, train_task, reference, tmp_path, dtype, size):
    """A real store of the tiny model: every file of the store over the samples, against
    (image tokens + answer tokens) x hidden x dtype size + the map (float32), within 5%."""
    labels = build_labels(tiny_vlm, train_task, reference, 24, cache_root=tmp_path, batch_size=8, progress=False,
                          store_dtype=dtype, **SHORT)  # fmt: skip
    store = next((tmp_path / "labels").iterdir())
    on_disk = sum(p.stat().st_size for p in store.iterdir() if p.name != "spec.json")
    d, n_image, n_answer = 64, 64, 2  # tiny-random-llava: hidden 64, 8x8 image tokens; answers of 2 tokens
    formula = (n_image + n_answer) * d * size + 4 * n_image
    assert abs(on_disk / 24 - formula) / formula < 0.05
    figures = store_figures(labels)
    assert figures["formula_bytes_per_sample"] == formula and figures["dtype"] == dtype
    assert figures["bytes_per_sample"] == pytest.approx(on_disk / 24)
    assert {r.patches.dtype for r in labels.rows()} == {getattr(torch, dtype)}


def test_bf16_store_holds_the_states_cast_to_bf16(tiny_vlm, train_task, reference, tmp_path):
    labels = build_labels(tiny_vlm, train_task, reference, 3, cache_root=tmp_path, batch_size=3, progress=False,
                          store_dtype="bfloat16", **SHORT)  # fmt: skip
    samples = list(train_task.samples(limit=3, seed=0))
    gens = tiny_vlm.generate(samples, [train_task.prompt(s) for s in samples], 2, frozenset({"hidden_states"}))
    for row, g in zip(labels.rows(), gens):
        assert torch.equal(row.patches, g.hidden_states[g.image_positions].to(torch.bfloat16))
        assert torch.equal(row.queries, g.hidden_states[g.query_positions].to(torch.bfloat16))
    assert labels.spec["store_dtype"] == "bfloat16"


def test_store_dtype_is_part_of_the_key_and_checked(tiny_vlm, train_task, reference, tmp_path):
    kw = dict(cache_root=tmp_path, batch_size=2, progress=False, **SHORT)
    build_labels(tiny_vlm, train_task, reference, 2, store_dtype="float16", **kw)
    build_labels(tiny_vlm, train_task, reference, 2, **kw)  # the model's dtype: float32
    assert len(list((tmp_path / "labels").iterdir())) == 2
    with pytest.raises(ParameterError, match="store dtype 'int8' is not one of"):
        build_labels(tiny_vlm, train_task, reference, 2, store_dtype="int8", **kw)


def test_shards_are_written_as_labelling_goes(tiny_vlm, train_task, reference, tmp_path, monkeypatch):
    """With small shards, finished shards are on disk while later samples are still being labelled."""
    seen = []
    real = tiny_vlm.generate

    def generate(samples, *a, **k):
        seen.append(len(list(tmp_path.rglob("shard-*.json"))))
        return real(samples, *a, **k)

    monkeypatch.setattr(tiny_vlm, "generate", generate)
    labels = build_labels(tiny_vlm, train_task, reference, 12, cache_root=tmp_path, batch_size=2, progress=False,
                          shard_bytes=30_000, **SHORT)  # a batch of 2 samples (17 kB each) fills one  # fmt: skip
    assert seen == [0, 1, 2, 3, 4, 5] and len(labels.shards) == 6
    assert [s.info["start"] for s in labels.shards] == [0, 2, 4, 6, 8, 10]
    assert labels.ids == [s.id for s in train_task.samples(limit=12, seed=0)]


# --------------------------------------------------------------------------- ragged grids, strict reading


def test_ragged_rows_round_trip_through_shards(tmp_path):
    rows = _rows(7, [(2, 3), (4,), (3, 3)], perturbed=True)
    written = _write(tmp_path, rows, shard_bytes=300)
    assert len(written) > 1  # several shards
    labels = open_store(tmp_path)
    assert labels.ids == [r.id for r in rows] and labels.grid is None
    assert labels.map_shapes == [r.map_shape for r in rows]
    for a, b in zip(labels.rows(), rows):
        assert torch.equal(a.patches, b.patches) and torch.equal(a.queries, b.queries)
        np.testing.assert_array_equal(a.map, b.map)
        np.testing.assert_array_equal(a.perturbed, b.perturbed)
    flat = labels.targets(0.3)  # grids differ: one flat array in sample order
    want = np.concatenate([(r.map - r.map.min()) / (r.map.max() - r.map.min()) >= 0.3 for r in rows])
    np.testing.assert_array_equal(flat, want)
    with pytest.raises(DataError, match="different shapes"):
        labels.maps
    b = labels.batch([0, 1, 2])
    assert b.patches.shape == (3, 9, 8) and b.patch_mask.sum(1).tolist() == [6, 4, 9]
    assert torch.equal(b.patches[1, :4], rows[1].patches) and not b.patches[1, 4:].any()
    sub = LabelSet.concat([labels.where("kind", ["b"]), labels.subset([1])])
    assert sub.ids == ["s0", "s3", "s6", "s1"]


def test_a_map_that_does_not_fit_the_image_tokens_is_refused(tmp_path):
    row = _rows(1, [(2, 3)])[0]
    row.map_shape = (2, 2)
    with pytest.raises(DataError, match=r"sample 's0': the reference map has shape \(2, 2\).*6 image tokens"):
        _write(tmp_path, [row])


@pytest.mark.parametrize("damage, message", [
    (lambda st, js: st.write_bytes(st.read_bytes()[:-16]), "has .* bytes, its JSON says"),
    (lambda st, js: js.write_text("{torn"), "is unreadable"),
    (lambda st, js: js.write_text(json.dumps({**json.loads(js.read_text()), "map_shapes": [[2, 2]] * 3})),
     "map shapes that do not match"),
    (lambda st, js: st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header" + b"\x00" * (st.stat().st_size - 20)),
     "is unreadable"),
])  # fmt: skip
def test_a_damaged_shard_is_an_error_naming_the_file(tmp_path, damage, message):
    _write(tmp_path, _rows(3, [(2, 3)]), shard_bytes=10**9)
    st, js = tmp_path / "shard-00000.safetensors", tmp_path / "shard-00000.json"
    damage(st, js)
    with pytest.raises(DataError, match=f"FastRM label store shard {st}.* {message}"):
        FileShard(js)


# --------------------------------------------------------------------------- streaming training


def test_training_batches_are_permuted_windows_of_bounded_size():
    """Windows of consecutive rows holding the buffer's bytes, each permuted with the seeded
    generator, batches cut across windows, the rest of a pass dropped (a plain implementation)."""
    rows = _rows(23, [(4,)], d=8, k=(1, 1))  # 4 x 8 x 4 + 8 x 4 + 16 = 176 bytes a row
    made = []

    def passes():
        for r in rows:
            made.append(r.id)
            yield r

    cfg = TrainConfig(batch_size=4, shuffle_buffer_mb=5 * 176 / 2**20)  # 5 rows a window
    batches = training_batches(RowSource(passes, {}), len(rows), cfg, torch.Generator().manual_seed(3))
    first = next(batches)
    assert len(made) == 5  # only the first window was read
    got = [first] + [next(batches) for _ in range(9)]
    g = torch.Generator().manual_seed(3)
    order = []
    for _ in range(2):  # two passes of 23 rows: 5 batches each, 3 rows dropped
        stream = []
        for w in range(0, 23, 5):
            window = rows[w : w + 5]
            stream += [window[i] for i in torch.randperm(len(window), generator=g).tolist()]
        order += [stream[i : i + 4] for i in range(0, 20, 4)]
    assert [[r.id for r in b] for b in got] == [[r.id for r in b] for b in order]


def test_stored_training_reads_the_store_not_a_copy(tmp_path):
    """Training from shards equals training from the same rows in memory (same seed, same weights)."""
    rows = _rows(20, [(3, 3)], d=16, k=(2, 2))
    _write(tmp_path, rows, shard_bytes=2000)
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=6, warmup=1, shuffle_buffer_mb=6 * 800 / 2**20)
    info = {"hidden_size": 16, "model_hash": "synthetic"}
    a, _ = train_proxy(open_store(tmp_path), None, cfg, info, progress=False)
    b, _ = train_proxy(LabelSet.from_rows(rows), None, cfg, info, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert a.info["train"]["n_train"] == 20 and a.grid == (3, 3)


def test_online_and_stored_training_give_the_same_proxy(cache_dir, tmp_path):
    """``xbench fastrm train --online`` (nothing stored for training) and the stored run, same seed
    and samples: identical weights."""
    from safetensors.torch import load_file

    from xbench.cli import main

    argv = ["fastrm", "train", "--model", "tiny-random-llava", "--samples", "10", "--val-samples", "3",
            "--test-samples", "3", "--label-batch-size", "4", "--max-new-tokens", "2", "--no-progress",
            "--steps", "4", "--batch-size", "4", "--cache", str(cache_dir), "--noise-std", "0",
            "--shuffle-buffer-mb", "0.05"]  # fmt: skip
    assert main(argv + ["--out", str(tmp_path / "stored")]) == 0
    stores = set((cache_dir / "labels").iterdir())
    assert main(argv + ["--online", "--out", str(tmp_path / "online")]) == 0
    assert set((cache_dir / "labels").iterdir()) == stores  # nothing more stored
    a = load_file(str(tmp_path / "stored" / "proxy.safetensors"))
    b = load_file(str(tmp_path / "online" / "proxy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "online" / "proxy.json").read_text())["info"]["train"]
    assert info["n_train"] == 10 and info["labels"]["online"] and "online" in info["rows_from"]


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fastrm-store-cache")


def test_online_refuses_validation_on_the_training_split(cache_dir, capsys):
    from xbench.cli import main

    argv = ["fastrm", "train", "--model", "tiny-random-llava", "--online", "--val-split", "train", "--out", "x",
            "--cache", str(cache_dir), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "--online validates on another split" in capsys.readouterr().err


# --------------------------------------------------------------------------- heads over grids that differ


def test_attention_head_without_positions_reads_padded_batches_as_each_sample_alone():
    from xbench.fastrm.heads import HEADS
    from xbench.fastrm.labelset import collate

    torch.manual_seed(0)
    rows = _rows(5, [(2, 3), (4,), (3, 3), (1, 5)], d=16)
    for normalise in ("none", "max", "minmax", "softmax"):
        head = HEADS.get("attention")(16, None, pos=False, normalise=normalise).eval()
        for p in head.parameters():
            torch.nn.init.normal_(p, std=0.3)
        b = collate(rows)
        with torch.no_grad():
            padded = head(b.patches, b.queries, b.patch_mask)
            folded = head.infer(b.patches, b.queries, b.patch_mask)
            for i, r in enumerate(rows):
                alone = head(r.patches[None], r.queries[None])[0]
                n, k = r.patches.shape[0], r.queries.shape[0]
                torch.testing.assert_close(padded[i, :k, :n], alone, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(folded[i, :k, :n], alone, rtol=1e-4, atol=1e-4)
                assert not padded[i, :, n:].any()  # padded patches: logit 0


@pytest.mark.parametrize("head,params", [("attention", {}), ("mlp", {})])
def test_a_head_with_positions_refuses_another_token_count(head, params):
    from xbench.fastrm.heads import HEADS

    h = HEADS.get(head)(16, 9, **params)
    with pytest.raises(ParameterError, match=f"'{head}' head has learned position embeddings for 9 image tokens; "
                                             r"these samples have \[12\].*pos=false"):  # fmt: skip
        h(torch.zeros(2, 12, 16), torch.zeros(2, 1, 16))
    with pytest.raises(ParameterError, match=f"'{head}' head learns a position embedding per image token"):
        HEADS.get(head)(16, None, **params)


def test_training_on_grids_that_differ(tmp_path):
    rows = _rows(12, [(2, 3), (3, 3)], d=16)
    _write(tmp_path, rows, shard_bytes=3000)
    cfg = TrainConfig(steps=3, batch_size=4, eval_every=3, warmup=1)
    info = {"hidden_size": 16, "model_hash": "synthetic"}
    with pytest.raises(ParameterError, match="'attention' head learns a position embedding.*pos=false"):
        train_proxy(open_store(tmp_path), None, cfg, info, progress=False)
    cfg.head_params = {"pos": False}
    proxy, history = train_proxy(open_store(tmp_path), open_store(tmp_path).subset(range(4)), cfg, info,
                                 progress=False)  # fmt: skip
    assert proxy.grid is None and np.isfinite(history[-1]["train_loss"]) and proxy.info["val"]["n_patches"] == 30
    proxy.save(tmp_path / "p")
    from xbench.fastrm.proxy import FastRMProxy
    from xbench.vlm import Generation

    from xbench.image_layout import ImageLayout, grid_boxes

    loaded = FastRMProxy.load(tmp_path / "p")
    gens = []
    layouts = [((2, 3),), ((3, 3),), ((1, 2), (2, 2))]  # the last: two grids, maps of shape (6,)
    for grids in layouts:  # generations whose grids differ: prompt [4 text, N image], 1 answer token
        n = sum(h * w for h, w in grids)
        boxes = np.concatenate([grid_boxes(g, (0, 0, 12, 12)) for g in grids])
        hidden = torch.cat([torch.randn(4, 16), torch.randn(n, 16), torch.randn(1, 16)])
        gens.append(Generation("g", "", list(range(4 + n)), [7], list(range(4, 4 + n)),
                               ImageLayout(grids, boxes, (12, 12)), None, hidden))  # fmt: skip
    out = loaded.predict(gens)
    assert [m.shape for m in out["map"]] == [(2, 3), (3, 3), (6,)]
    assert [t.shape for t in out["per_token"]] == [(1, 2, 3), (1, 3, 3), (1, 6)]
    for g, m, e in zip(gens, out["map"], out["entropy"]):
        alone = loaded.predict([g])
        np.testing.assert_allclose(alone["map"][0], m, rtol=1e-5, atol=1e-6)
        assert alone["entropy"][0] == pytest.approx(e, rel=1e-5)


def test_the_documented_llava_7b_figure_is_the_formula():
    """results/fastrm/README.md: LLaVA-1.5-7B (576 image tokens, hidden 4096) in bf16, one answer token."""
    from xbench.fastrm.store import row_bytes

    assert row_bytes(576, 1, 4096, torch.bfloat16) == (576 + 1) * 4096 * 2 + 576 * 4 == 4_729_088
    assert row_bytes(576, 1, 4096, torch.float32) == (576 + 1) * 4096 * 4 + 576 * 4
    assert row_bytes(576, 1, 4096, torch.bfloat16, perturbed=True) == 4_729_088 + 576 * 4


@pytest.mark.parametrize("model", ["tiny-random-llava", "tiny-random-llava-next", "tiny-random-qwen2-vl"])
def test_the_noise_ceiling_adds_noise_per_channel_in_every_pixel_layout(plugins, model):
    """One image [1, C, H, W], crops [1, n, C, H, W], flat patch rows [1, L, C*T*p*p]: the noise of each
    colour channel has std noise_std / image_std[channel], through the adapter; seeded per sample."""
    from xbench.fastrm.labels import perturb
    from xbench.models import load_vlm

    vlm = load_vlm(model, plugins.registries, device="cpu")
    task = plugins.registries.tasks.get("easyvqa")()
    (sample,) = task.samples(limit=1, seed=0)
    (gen,) = vlm.generate([sample], [task.prompt(sample)], 1)
    noisy = perturb(vlm, gen, 0.1, 0).pixel_values
    assert noisy.shape == gen.pixel_values.shape
    assert torch.equal(noisy, perturb(vlm, gen, 0.1, 0).pixel_values)
    diff = (noisy - gen.pixel_values).float()
    channel = vlm.pixel_channels(gen).expand(diff.shape)
    for c, std in enumerate(vlm.image_std):
        assert diff[channel == c].std().item() == pytest.approx(0.1 / std, rel=0.05)
