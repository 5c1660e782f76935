"""Plain generation, gradient relevancy and FastRM side by side on the real architectures of each
model family at full size, with random bf16 weights (timing and memory do not depend on weight values).

    python benchmarks/families_gpu.py                      # on a CUDA machine -> results/families_gpu/
    python benchmarks/families_gpu.py --archs llava-1.5-7b,qwen2-vl-7b
    python benchmarks/families_gpu.py --tiny --device cpu  # the tiny mirrors: checks every path runs

Each architecture starts from its family's tiny zoo mirror (the public checkpoint's config, processor
settings and chat template with the big dimensions shrunk) and puts the public checkpoint's big
dimensions back (:data:`FULL_SIZE`: widths, depths, heads, vocabulary, image sizes); the config and
processor files are written without weights, the model is initialised directly on the device in
``--dtype`` and wrapped in the family's own adapter, exactly as ``--model DIR`` would load it. One
easy-vqa image (enlarged to ``--image-size``) and question; the answer is ``--answer-len`` tokens (``min_new_tokens``). Paths per
architecture, each warmed up once, then ``--repeats`` synchronised calls: ``generate`` (sdpa),
``generate_eager``, ``gradient_relevancy`` (all answer tokens, LM scope), ``fastrm`` (a random-weight
attention-head proxy over the kept hidden states: the explained answer minus the plain one is its
cost). Peak GPU memory is ``torch.cuda.max_memory_allocated`` over each call (weights included),
null off-GPU. The image-token count of each architecture is recorded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14, "projection_dim": 768}
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

#: per architecture: the zoo mirror it starts from, the public checkpoint's big dimensions (merged
#: into the mirror's ``config.json`` / ``preprocessor_config.json`` / ``processor_config.json``), and
#: the image tokens the public processor gives a 64x64 image (measured on the public checkpoints with
#: transformers 5.24; the tests check the full-size files reproduce it) and, where listed, the
#: parameter count the public model card gives (billions; the tests count the full-size config's
#: parameters on the meta device)
FULL_SIZE: dict[str, dict] = {
    "llava-1.5-7b": {
        "mirror": "tiny-random-llava", "public": "llava-hf/llava-1.5-7b-hf", "image_tokens_at_64px": 576,
        "public_parameters_b": 7.06,
        "config": {"vision_config": CLIP_L_336,
                   "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
                                   "vocab_size": 32064, "max_position_embeddings": 4096},
                   "vision_feature_layer": -2},
        "processor": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        "processor_extra": {"patch_size": 14},
    },
    "llava-interleave-qwen-0.5b": {
        "mirror": "tiny-random-llava-interleave", "public": "llava-hf/llava-interleave-qwen-0.5b-hf",
        "image_tokens_at_64px": 729,
        "config": {"vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
                                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
                   "text_config": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
                                   "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151646,
                                   "max_position_embeddings": 32768, "layer_types": ["full_attention"] * 24}},
        "processor": {"size": {"height": 384, "width": 384}},
        "processor_extra": {"patch_size": 14},
    },
    "qwen2-vl-2b": {
        "mirror": "tiny-random-qwen2-vl", "public": "Qwen/Qwen2-VL-2B-Instruct", "image_tokens_at_64px": 4,
        "public_parameters_b": 2.21,
        "config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "max_window_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": True,
                   "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "hidden_size": 1536}},
        "processor": {"max_pixels": 12845056},
    },
    "qwen2-vl-7b": {
        "mirror": "tiny-random-qwen2-vl", "public": "Qwen/Qwen2-VL-7B-Instruct", "image_tokens_at_64px": 4,
        "public_parameters_b": 8.29,
        "config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "max_window_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False,
                   "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "hidden_size": 3584}},
        "processor": {"max_pixels": 12845056},
    },
    "qwen2.5-vl-3b": {
        "mirror": "tiny-random-qwen2.5-vl", "public": "Qwen/Qwen2.5-VL-3B-Instruct", "image_tokens_at_64px": 4,
        "public_parameters_b": 3.75,
        "config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "max_window_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": True,
                   "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                     "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31]}},
        "processor": {"max_pixels": 12845056},
    },
    "paligemma-3b-pt-224": {
        "mirror": "tiny-random-paligemma", "public": "google/paligemma-3b-pt-224", "image_tokens_at_64px": 256,
        "public_parameters_b": 2.92,
        "config": {"hidden_size": 2048, "projection_dim": 2048, "vocab_size": 257216,
                   "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                     "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 2048},
                   "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                                   "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                                   "vocab_size": 257216, "num_image_tokens": 256}},
        "processor": {"size": {"height": 224, "width": 224}, "image_seq_length": 256},
    },
    "gemma-3-4b-it": {
        "mirror": "tiny-random-gemma3", "public": "google/gemma-3-4b-it", "image_tokens_at_64px": 256,
        "public_parameters_b": 4.30,
        "config": {"mm_tokens_per_image": 256,
                   "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                     "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
                   "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                                   "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                                   "query_pre_attn_scalar": 256, "vocab_size": 262208, "sliding_window": 1024,
                                   "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5 + ["sliding_attention"] * 4}},
        "processor": {"size": {"height": 896, "width": 896}, "image_seq_length": 256},
        "processor_extra": {"image_seq_length": 256},
    },
    "llava-next-mistral-7b": {
        "mirror": "tiny-random-llava-next", "public": "llava-hf/llava-v1.6-mistral-7b-hf", "image_tokens_at_64px": 1176,
        "public_parameters_b": 7.57,
        "config": {"image_grid_pinpoints": NEXT_PINPOINTS, "image_seq_length": 576,
                   "vision_config": CLIP_L_336,
                   "text_config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                   "vocab_size": 32064, "max_position_embeddings": 32768}},
        "processor": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
                      "image_grid_pinpoints": NEXT_PINPOINTS},
        "processor_extra": {"patch_size": 14},
    },
    "llava-onevision-qwen2-0.5b": {
        "mirror": "tiny-random-llava-onevision", "public": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "config": {"image_grid_pinpoints": ONEVISION_PINPOINTS,
                   "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
                                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
                   "text_config": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151647,
                                   "max_position_embeddings": 32768}},
        "processor": {"size": {"height": 384, "width": 384}, "image_grid_pinpoints": ONEVISION_PINPOINTS},
        "processor_extra": {"num_image_tokens": 729},
    },
    "smolvlm-instruct": {
        "mirror": "tiny-random-smolvlm", "public": "HuggingFaceTB/SmolVLM-Instruct", "image_tokens_at_64px": 1377,
        "public_parameters_b": 2.25,
        "config": {"vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                     "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
                   "text_config": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                                   "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64,
                                   "vocab_size": 49155, "max_position_embeddings": 16384}},
        "processor": {"size": {"longest_edge": 1536}, "max_image_size": {"longest_edge": 384}},
        "processor_extra": {"image_seq_len": 81},
    },
}


def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, nested dicts key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def full_size_dir(arch: str, out: Path, tiny: bool) -> Path:
    """The mirror's files (no weights) with the public checkpoint's big dimensions (unless ``tiny``)."""
    import shutil

    from xbench.plugins import default

    spec = FULL_SIZE[arch]
    source = default().registries.models.get(spec["mirror"]).locate()
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    if not tiny:
        for name, key in (("config.json", "config"), ("preprocessor_config.json", "processor"),
                          ("processor_config.json", "processor_extra")):
            if spec.get(key) and (out / name).exists():
                (out / name).write_text(json.dumps(merged(json.loads((out / name).read_text()), spec[key]), indent=1))
    return out


def build_adapter(arch: str, folder: Path, device: str, dtype):
    """The family's adapter over a random-weight model built on ``device`` from ``folder``'s config
    (the folder has no weights on purpose: the adapter is constructed, as its ``load`` would)."""
    import torch
    import transformers

    from xbench.api import ModelIdentity
    from xbench.plugins import default

    config = json.loads((folder / "config.json").read_text())
    family = next(e.obj for e in default().registries.model_families
                  if config["model_type"] in e.obj.model_types and e.obj.accepts(config))
    hf_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, family.model_class)._from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    model.generation_config = transformers.GenerationConfig.from_model_config(hf_config)
    processor = family.load_processor(folder)
    identity = ModelIdentity(name=f"{arch}-architecture-random", path=folder)
    return family(model, processor, identity, device, dtype, "sdpa")


def timed(fn, device: str, repeats: int) -> dict:
    """Warm-up once, then ``repeats`` synchronised calls: median seconds, peak GPU GiB or None."""
    import time

    import torch

    cuda = device.startswith("cuda")
    fn()
    seconds, peaks = [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        peaks.append(torch.cuda.max_memory_allocated() / 2**30 if cuda else None)
    return {"seconds": statistics.median(seconds), "all_seconds": seconds, "peak_gpu_gib": peaks[-1]}


def random_proxy_for(vlm, generation, out: Path) -> Path:
    """A random-weight attention-head FastRM proxy for ``vlm`` saved in ``out`` (timing does not
    depend on its weights)."""
    from xbench.fastrm.proxy import model_identity
    from xbench.fastrm.testing import random_proxy

    return random_proxy(model_identity(vlm), tuple(generation.grid), "attention").save(out)


def measure(arch: str, vlm, answer_len: int, repeats: int, image_size: int) -> dict:
    """Every path on one easy-vqa sample (see the module docstring)."""
    from xbench.plugins import default

    plugins = default()
    task = plugins.registries.tasks.get("easyvqa")()
    first = next(iter(task.samples(limit=1, seed=0)))
    # the 64 px easy-vqa image enlarged: processors that keep the resolution (Qwen2-VL) see a realistic size
    sample = dataclasses.replace(first, image=first.load_image().resize((image_size, image_size)))
    prompt = task.prompt(sample)
    keep = frozenset({"hidden_states"})
    results = {}
    with vlm.attention("sdpa"):
        results["generate"] = timed(lambda: vlm.generate([sample], [prompt], answer_len), vlm.device, repeats)
    with vlm.attention("eager"):
        results["generate_eager"] = timed(lambda: vlm.generate([sample], [prompt], answer_len), vlm.device, repeats)
        gen = vlm.generate([sample], [prompt], answer_len, keep=keep)[0]
        relevancy = plugins.registries.methods.get("gradient_relevancy")()
        results["gradient_relevancy"] = timed(lambda: relevancy.explain(vlm, [gen]), vlm.device, repeats)
    proxy_dir = random_proxy_for(vlm, gen, Path(tempfile.mkdtemp()) / "proxy")
    fastrm = plugins.registries.methods.get("fastrm")(proxy=str(proxy_dir))
    with vlm.attention("sdpa"):
        def explained():
            g = vlm.generate([sample], [prompt], answer_len, keep=keep)
            return fastrm.explain(vlm, g)
        results["fastrm"] = timed(explained, vlm.device, repeats)
    return {"results": results, "image_tokens": len(gen.image_positions), "grids": [list(g) for g in gen.layout.grids],
            "prompt_tokens": gen.prompt_len, "answer_tokens": len(gen.answer_ids)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", help=f"comma-separated, default all: {','.join(FULL_SIZE)}")
    p.add_argument("--tiny", action="store_true", help="keep the mirrors' tiny sizes (smoke test on any device)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--answer-len", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=448, help="side the easy-vqa image is enlarged to (default 448)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "families_gpu")
    args = p.parse_args(argv)
    import torch

    from xbench.provenance import device_name, environment

    archs = args.archs.split(",") if args.archs else list(FULL_SIZE)
    unknown = [a for a in archs if a not in FULL_SIZE]
    if unknown:
        print(f"unknown architecture(s) {unknown}; known: {sorted(FULL_SIZE)}", file=sys.stderr)
        return 2
    report = {"device": device_name(args.device), "dtype": args.dtype, "tiny": args.tiny,
              "environment": environment(args.device), "archs": {}}
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            folder = full_size_dir(arch, Path(tmp) / arch, args.tiny)
            vlm = build_adapter(arch, folder, args.device, getattr(torch, args.dtype))
            entry = measure(arch, vlm, args.answer_len, args.repeats, args.image_size)
        entry["public"] = FULL_SIZE[arch]["public"]
        entry["parameters"] = sum(p.numel() for p in vlm.model.parameters())
        rel, plain = entry["results"]["gradient_relevancy"], entry["results"]["generate"]
        entry["relevancy_over_generate_seconds"] = rel["seconds"] / plain["seconds"]
        entry["fastrm_extra_seconds"] = entry["results"]["fastrm"]["seconds"] - plain["seconds"]
        report["archs"][arch] = entry
        print(arch, json.dumps({k: v["seconds"] for k, v in entry["results"].items()}), flush=True)
        del vlm
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tiny" if args.tiny else report["device"].replace(" ", "_").replace("/", "_")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
