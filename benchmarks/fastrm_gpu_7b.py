"""FastRM on the LLaVA-1.5-7B architecture (random bf16 weights, random proxy weights), on a GPU.

The model comes from ``benchmarks/relevancy_gpu_7b.py`` (built offline from its sizes, random
weights directly on the device; timing and memory do not depend on weight values). The proxy
is FastRM's default head with seeded random weights, made for this model (hidden size 4096,
24x24 patches). Prompt ``--prompt-len`` tokens (576 image tokens), answer ``--answer-len``
greedy tokens (forced to the full length).

Paths, each synchronised, peak GPU memory over the call (weights included):

* plain answer: ``generate`` with sdpa attention, nothing kept;
* FastRM-explained answer: the same ``generate`` with the adapter's last-hidden-state capture
  (what ``needs={"hidden_states"}`` does), then ``fastrm.explain``;
* FastRM map alone: ``fastrm.explain`` of that generation;
* gradient_relevancy (eager attention): all answer tokens, and the first token only.

Plain and explained answers alternate ``--repeats`` times after a warm-up; medians are
reported. Targets: FastRM map >= 1000x faster than gradient_relevancy; explained answer
<= 1.02x plain latency and <= 1.01x plain peak GPU memory.

The label store and proxy training at this size (:func:`label_and_train`):

* labelling: ``--label-samples`` samples each answered with eager attention and the adapter's
  hidden-state capture, explained by gradient_relevancy, cut into a store row on the device
  (:func:`xbench.fastrm.labels.make_row`, the labeller's) and written by the labeller's
  :class:`~xbench.fastrm.store.ShardWriter` in the model's dtype; throughput in samples/s;
* store bytes per sample: on disk, and by the formula (image + answer tokens) x hidden x
  dtype size + the map;
* proxy training: ``--train-steps`` steps of ``xbench.fastrm.train.train_proxy`` on the device,
  batch ``--train-batch``, streaming from a store of the labelled rows repeated to
  ``4 x batch`` rows (step time does not depend on values); median step time and peak GPU memory.

    python benchmarks/fastrm_gpu_7b.py            # on a CUDA machine -> results/fastrm/gpu_7b-<device>.{json,md}
    python benchmarks/fastrm_gpu_7b.py --tiny     # tiny config on any device: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"map_speedup": 1000.0, "latency_ratio": 1.02, "memory_ratio": 1.01}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config of the same shape (smoke test, any device)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--prompt-len", type=int, default=None, help="prompt tokens incl. image tokens (default 625; tiny 80)"
    )
    p.add_argument("--answer-len", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--head", default=None, help="FastRM proxy head (default: the default proxy's)")
    p.add_argument("--label-samples", type=int, default=None, help="samples labelled (default 8; tiny 3)")
    p.add_argument("--train-steps", type=int, default=None, help="proxy training steps timed (default 20; tiny 4)")
    p.add_argument("--train-batch", type=int, default=None, help="proxy training batch (default 64; tiny 4)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "fastrm")
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    import relevancy_gpu_7b as arch

    from xbench import provenance
    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.proxy_store import DEFAULT_HEAD
    from xbench.fastrm.testing import random_proxy
    from xbench.plugins import default

    if not args.tiny and not args.device.startswith("cuda"):
        raise SystemExit("the 7B architecture needs a CUDA device; use --tiny to check the script elsewhere")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = arch.build(args.tiny, args.device, dtype)
    vlm = arch.adapter(model, args.device, dtype, model_hash="random-weights", config_hash="random-weights")
    ids, pixels, n_image = arch.prompt(model, args.prompt_len or (80 if args.tiny else 625), args.device, dtype)
    side = int(n_image**0.5)
    args.head = args.head or DEFAULT_HEAD
    methods = default().registries.methods
    tmp = tempfile.TemporaryDirectory()
    proxy_dir = random_proxy(model_identity(vlm), (side, side), args.head).save(Path(tmp.name) / "proxy")
    fastrm = methods.get("fastrm")(proxy=str(proxy_dir))
    generate = arch.generator(model, ids, pixels, args.answer_len)
    state = {}

    def explained():
        store: list = []
        with vlm._capture_last_hidden(store):
            seq = generate()
        answer = seq[0, len(ids) :].tolist()
        hidden = torch.cat(store, dim=1)[0, : len(ids) + len(answer) - 1]
        state["gen"] = gen = arch.generation(ids, answer, n_image, pixels, hidden)
        state["map"] = fastrm.explain(vlm, [gen])[0]

    model.set_attn_implementation("sdpa")
    generate(), explained()  # warm-up
    runs = {"plain_answer": [], "fastrm_explained_answer": []}
    for r in range(args.repeats):
        order = [("plain_answer", generate), ("fastrm_explained_answer", explained)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            runs[name].append(arch.timed(fn, args.device))
    results = {name: arch.summarise(calls) for name, calls in runs.items()}
    gen = state["gen"]
    results["fastrm_map"] = arch.measure(lambda: fastrm.explain(vlm, [gen]), args.device, args.repeats)
    model.set_attn_implementation("eager")
    for label, params in (("gradient_relevancy_map", {}), ("gradient_relevancy_first_token_map", {"token": "first"})):
        method = methods.get("gradient_relevancy")(**params)
        results[label] = arch.measure(lambda: method.explain(vlm, [gen]), args.device, max(3, args.repeats // 3))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    store = label_and_train(vlm, model, ids, pixels, n_image, args, arch)
    results.update(store.pop("results"))
    plain, explained_r, fmap = results["plain_answer"], results["fastrm_explained_answer"], results["fastrm_map"]
    ratios = {
        "map_speedup": results["gradient_relevancy_map"]["seconds"] / fmap["seconds"],
        "map_speedup_first_token": results["gradient_relevancy_first_token_map"]["seconds"] / fmap["seconds"],
        "latency_ratio": explained_r["seconds"] / plain["seconds"],
        "memory_ratio": None if plain["peak_gpu_gib"] is None else explained_r["peak_gpu_gib"] / plain["peak_gpu_gib"],
    }
    met = {
        k: None if ratios[k] is None else (ratios[k] >= t if k == "map_speedup" else ratios[k] <= t)
        for k, t in TARGETS.items()
    }
    env = provenance.environment(args.device)
    report = {
        "what": "FastRM vs gradient_relevancy vs plain answers, LLaVA-1.5-7B architecture, random weights"
        + (" -- TINY CONFIG SMOKE TEST, not the 7B figures" if args.tiny else ""),
        "tiny": args.tiny,
        "device_name": env["device_name"],
        "dtype": str(dtype).replace("torch.", ""),
        "prompt_len": len(ids),
        "image_tokens": n_image,
        "answer_len": len(gen.answer_ids),
        "repeats": args.repeats,
        "head": args.head,
        "hidden_size": model.config.text_config.hidden_size,
        "n_parameters": sum(q.numel() for q in model.parameters()),
        "confidence_extra": state["map"].extras,
        "store": store,
        "results": results,
        "ratios": ratios,
        "targets": TARGETS,
        "met": met,
        "environment": env,
        "finished": provenance.now(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = ("gpu_7b-tiny-" if args.tiny else "gpu_7b-") + re.sub(r"[^A-Za-z0-9]+", "-", env["device_name"]).strip(
        "-"
    ).lower()
    (args.out / f"{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{slug}.md").write_text(markdown(report))
    print(markdown(report))
    tmp.cleanup()
    return 0


def label_and_train(vlm, model, ids, pixels, n_image: int, args, arch) -> dict:
    """Labelling throughput, store bytes per sample, proxy training step time and peak GPU
    memory (see the module docstring); ``results`` holds the two timed paths."""
    from xbench import cost
    from xbench.fastrm.labels import make_row
    from xbench.fastrm.labelset import open_store, store_figures
    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.store import ShardWriter, dtype_name, store_dtype
    from xbench.fastrm.train import TrainConfig, train_proxy
    from xbench.plugins import default

    n_label = args.label_samples or (3 if args.tiny else 8)
    steps, batch = args.train_steps or (4 if args.tiny else 20), args.train_batch or (4 if args.tiny else 64)
    dtype = store_dtype(None, vlm.dtype)  # the model's, as `xbench fastrm labels` stores by default
    reference = default().registries.methods.get("gradient_relevancy")()
    generate = arch.generator(model, ids, pixels, args.answer_len)
    tmp = tempfile.TemporaryDirectory()
    labels_dir, train_dir = Path(tmp.name) / "labels", Path(tmp.name) / "train"
    writer = ShardWriter(labels_dir, dtype, 0, 0)

    def label(i: int):
        captured: list = []
        with vlm._capture_last_hidden(captured):
            seq = generate()
        answer = seq[0, len(ids) :].tolist()
        hidden = torch.cat(captured, dim=1)[0, : len(ids) + len(answer) - 1]
        gen = arch.generation(ids, answer, n_image, pixels, hidden)
        rmap = reference.explain(vlm, [gen])[0]
        writer.add([make_row(gen, rmap, f"bench-{i}", i, 1.0, {}, dtype)], [], i + 1)

    model.set_attn_implementation("eager")  # labelling explains with gradient_relevancy
    label(0)  # warm-up, not kept apart: the store holds n_label + 1 rows
    calls = [arch.timed(lambda i=i: label(i), args.device) for i in range(1, n_label + 1)]
    writer.close()
    identity = model_identity(vlm)
    for d in (labels_dir, train_dir):
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.json").write_text(json.dumps({"model": identity, "store_dtype": dtype_name(dtype)}))
    labelled = open_store(labels_dir)
    rows = list(labelled.rows())
    repeat = ShardWriter(train_dir, dtype, 0, 0)
    for i in range(max(4 * batch, len(rows))):
        repeat.add([rows[i % len(rows)]], [], i + 1)
    repeat.close()
    cfg = TrainConfig(steps=steps, batch_size=batch, eval_every=steps, warmup=1, device=args.device)
    with cost.measure(args.device) as m:
        proxy, _ = train_proxy(open_store(train_dir), None, cfg, identity, progress=False)
    step = proxy.info["train"]["seconds"] / steps
    figures = store_figures(labelled)
    tmp.cleanup()
    labelling = arch.summarise(calls)
    return {
        "results": {
            "labelling_per_sample": labelling,
            "proxy_training_step": {"seconds": step, "all_seconds": [step], "peak_gpu_gib": None if m.peak_gpu_bytes is None else m.peak_gpu_bytes / 2**30},
        },
        "label_samples": n_label,
        "labelling_samples_per_second": 1.0 / labelling["seconds"],
        "store_dtype": dtype_name(dtype),
        "bytes_per_sample": figures["bytes_per_sample"],
        "formula_bytes_per_sample": figures["formula_bytes_per_sample"],
        "image_tokens": figures["image_tokens"],
        "answer_tokens": figures["answer_tokens"],
        "train_steps": steps,
        "train_batch": batch,
        "train_rows": max(4 * batch, len(rows)),
    }


def markdown(r: dict) -> str:
    from tabulate import tabulate

    fmt = lambda v, spec: "null" if v is None else format(v, spec)  # noqa: E731
    rows = [[k, fmt(v["seconds"] * 1e3, ".3f"), fmt(v["peak_gpu_gib"], ".3f")] for k, v in r["results"].items()]
    table = tabulate(rows, headers=["path", "ms (median)", "peak GPU GiB"], tablefmt="github")
    word = lambda b: "n/a (no GPU)" if b is None else ("met" if b else "NOT met")  # noqa: E731
    ra, t, met, st = r["ratios"], r["targets"], r["met"], r["store"]
    return (
        f"# {r['what']}\n\n"
        f"Device: {r['device_name']}; dtype {r['dtype']}; prompt {r['prompt_len']} tokens ({r['image_tokens']} image), "
        f"answer {r['answer_len']} tokens; {r['n_parameters'] / 1e9:.3f} B parameters; FastRM {r['head']} head over "
        f"hidden size {r['hidden_size']}; medians of {r['repeats']} (plain and explained answers alternating).\n\n"
        f"{table}\n\n"
        f"- gradient_relevancy / FastRM map time: {ra['map_speedup']:.0f}x (first token only: {ra['map_speedup_first_token']:.0f}x); "
        f"target >= {t['map_speedup']:.0f}x: {word(met['map_speedup']) if not r['tiny'] else 'n/a (tiny)'}\n"
        f"- explained / plain answer latency: {ra['latency_ratio']:.4f}x; target <= {t['latency_ratio']}x: "
        f"{word(met['latency_ratio']) if not r['tiny'] else 'n/a (tiny)'}\n"
        f"- explained / plain answer peak GPU memory: {fmt(ra['memory_ratio'], '.4f')}{'' if ra['memory_ratio'] is None else 'x'}; target <= {t['memory_ratio']}x: "
        f"{word(met['memory_ratio'])}\n"
        f"- label store ({st['store_dtype']}, {st['image_tokens']:.0f} image + {st['answer_tokens']:.0f} answer tokens): "
        f"{st['bytes_per_sample']:,.0f} bytes/sample on disk, {st['formula_bytes_per_sample']:,.0f} by the formula; "
        f"labelling {st['labelling_samples_per_second']:.3f} samples/s (median of {st['label_samples']}); proxy training "
        f"{r['results']['proxy_training_step']['seconds'] * 1e3:.1f} ms/step at batch {st['train_batch']} "
        f"(peak GPU {fmt(r['results']['proxy_training_step']['peak_gpu_gib'], '.3f')} GiB)\n\n"
        f"git {r['environment']['git_sha']}, torch {r['environment']['torch']}, transformers {r['environment']['transformers']}, "
        f"{r['finished']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
