"""gradient_relevancy beside plain generation on the LLaVA-1.5-7B architecture with random weights.

The model is built offline from its sizes (CLIP ViT-L/14-336: 24 layers, width 1024, 576
patches; Llama-2-7B: 32 layers, width 4096, MLP 11008, 32 heads; vision_feature_layer -2),
randomly initialised directly on the device in bf16 (timing and memory do not depend on weight
values). Prompt: ``--prompt-len`` tokens including the 576 image tokens; answer: ``--answer-len``
greedy tokens (``min_new_tokens`` forces the full length). Each path runs once untimed (warm-up),
then ``--repeats`` times, synchronised; peak GPU memory is ``torch.cuda.max_memory_allocated``
over the call (weights included), null off-GPU.

Paths: generate with sdpa, generate with eager attention, gradient_relevancy (all answer
tokens; first token only). Target: relevancy peak <= 1.45x plain (sdpa) generation's peak.

    python benchmarks/relevancy_gpu_7b.py                 # on a CUDA machine -> results/relevancy_gpu/
    python benchmarks/relevancy_gpu_7b.py --tiny          # tiny config, any device: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TOKEN = 32000
TARGET_RATIO = 1.45


def llava_config(tiny: bool):
    """LLaVA-1.5-7B sizes, or a tiny config of the same shape for a smoke test."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if tiny:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=64, patch_size=8)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14)
        text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    return LlavaConfig(
        vision_config=CLIPVisionConfig(projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5, **vision),
        text_config=LlamaConfig(vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0,
                                bos_token_id=1, eos_token_id=2, **text),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build(tiny: bool, device: str, dtype: torch.dtype):
    """Random weights, created on ``device`` in ``dtype``, eager attention, frozen, eval mode."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(llava_config(tiny), dtype=dtype, attn_implementation="eager")
    return model.eval().requires_grad_(False)


def adapter(model, device: str, dtype: torch.dtype, **identity):
    """xbench's LLaVA adapter around the model (no tokenizer is needed for re-forwards);
    ``identity``: further :class:`~xbench.api.ModelIdentity` fields (hashes)."""
    from xbench.api import ModelIdentity
    from xbench.models.llava import LlavaAdapter

    tok = SimpleNamespace(padding_side="left", pad_token_id=0, eos_token_id=2)
    ident = ModelIdentity(name="llava-1.5-7b-architecture-random", **identity)
    return LlavaAdapter(model, SimpleNamespace(tokenizer=tok), ident, device, dtype, "eager")


def prompt(model, prompt_len: int, device: str, dtype: torch.dtype):
    vc = model.config.vision_config
    n_image = (vc.image_size // vc.patch_size) ** 2
    n_text = prompt_len - n_image
    if n_text < 2:
        raise SystemExit(f"--prompt-len must exceed the {n_image} image tokens by at least 2")
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (n_text,), generator=g).tolist()
    ids = [1] + text[: n_text // 3] + [IMAGE_TOKEN] * n_image + text[n_text // 3 + 1 :]
    pixels = torch.randn(1, 3, vc.image_size, vc.image_size, generator=g).to(device, dtype)
    return ids, pixels, n_image


def generator(model, ids: list[int], pixels, answer_len: int):
    """A function running greedy generation of exactly ``answer_len`` tokens for the prompt."""
    input_ids = torch.tensor([ids], device=pixels.device)

    def generate():
        with torch.no_grad():
            return model.generate(input_ids=input_ids, pixel_values=pixels, max_new_tokens=answer_len,
                                  min_new_tokens=answer_len, do_sample=False, pad_token_id=0, eos_token_id=2)

    return generate


def generation(ids: list[int], answer: list[int], n_image: int, pixels, hidden_states=None):
    """The :class:`~xbench.api.Generation` of the benchmark prompt and its answer."""
    from xbench.api import Generation
    from xbench.image_layout import single_grid

    side = int(n_image**0.5)
    size = tuple(pixels.shape[-2:])
    return Generation(sample_id="bench", text="", prompt_ids=ids, answer_ids=answer,
                      image_positions=[i for i, t in enumerate(ids) if t == IMAGE_TOKEN],
                      layout=single_grid((side, side), (0, 0, *size), size),
                      pixel_values=pixels, hidden_states=hidden_states)


def timed(fn, device: str) -> tuple[float, int | None]:
    """One synchronised call of ``fn``: ``(seconds, peak GPU bytes or None off-GPU)``."""
    from xbench import cost

    with cost.measure(device) as m:
        fn()
    return m.seconds, m.peak_gpu_bytes


def summarise(calls: list[tuple[float, int | None]]) -> dict:
    """Median seconds, every call's seconds, and the largest peak in GiB (None off-GPU)."""
    peaks = [b for _, b in calls if b is not None]
    return {
        "seconds": statistics.median(s for s, _ in calls),
        "all_seconds": [s for s, _ in calls],
        "peak_gpu_gib": max(peaks) / 2**30 if peaks else None,
    }


def measure(fn, device: str, repeats: int) -> dict:
    """Warm-up once, then ``repeats`` synchronised calls, summarised."""
    fn()
    return summarise([timed(fn, device) for _ in range(repeats)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config of the same shape (smoke test, any device)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens incl. image tokens (default 625; tiny 80)")
    p.add_argument("--answer-len", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "relevancy_gpu")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from xbench import provenance
    from xbench.plugins import default

    if not args.tiny and not args.device.startswith("cuda"):
        raise SystemExit("the 7B architecture needs a CUDA device; use --tiny to check the script elsewhere")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build(args.tiny, args.device, dtype)
    vlm = adapter(model, args.device, dtype)
    ids, pixels, n_image = prompt(model, args.prompt_len or (80 if args.tiny else 625), args.device, dtype)
    generate = generator(model, ids, pixels, args.answer_len)

    model.set_attn_implementation("sdpa")
    results = {"generate_sdpa": measure(generate, args.device, args.repeats)}
    model.set_attn_implementation("eager")
    results["generate_eager"] = measure(generate, args.device, args.repeats)
    gen = generation(ids, generate()[0, len(ids):].tolist(), n_image, pixels)
    methods = default().registries.methods
    for label, params in (("gradient_relevancy", {}), ("gradient_relevancy_first_token", {"token": "first"})):
        method = methods.get("gradient_relevancy")(**params)
        results[label] = measure(lambda m=method: m.explain(vlm, [gen]), args.device, args.repeats)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    base = results["generate_sdpa"]["peak_gpu_gib"]
    for r in results.values():
        r["peak_vs_generate_sdpa"] = None if base is None else r["peak_gpu_gib"] / base
        r["time_vs_generate_sdpa"] = r["seconds"] / results["generate_sdpa"]["seconds"]
    env = provenance.environment(args.device)
    report = {
        "what": "gradient_relevancy vs plain generation, LLaVA-1.5-7B architecture, random weights"
        + (" -- TINY CONFIG SMOKE TEST, not the 7B figures" if args.tiny else ""),
        "tiny": args.tiny,
        "device_name": env["device_name"],
        "dtype": str(dtype).replace("torch.", ""),
        "prompt_len": len(ids), "image_tokens": n_image, "answer_len": len(gen.answer_ids), "repeats": args.repeats,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "target_peak_ratio": TARGET_RATIO,
        "meets_target": None if base is None else results["gradient_relevancy"]["peak_vs_generate_sdpa"] <= TARGET_RATIO,
        "results": results,
        "environment": env,
        "finished": provenance.now(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = ("tiny-" if args.tiny else "llava7b-") + re.sub(r"[^A-Za-z0-9]+", "-", env["device_name"]).strip("-").lower()
    (args.out / f"{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{slug}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    from tabulate import tabulate

    fmt = lambda v, spec: "null" if v is None else format(v, spec)  # noqa: E731
    rows = [[k, fmt(v["seconds"], ".4f"), fmt(v["peak_gpu_gib"], ".2f"), fmt(v["peak_vs_generate_sdpa"], ".3f"),
             fmt(v["time_vs_generate_sdpa"], ".2f")] for k, v in r["results"].items()]
    table = tabulate(rows, headers=["path", "s / sample (median)", "peak GPU GiB", "peak / generate sdpa", "time / generate sdpa"],
                     tablefmt="github")
    return (
        f"# {r['what']}\n\n"
        f"Device: {r['device_name']}; dtype {r['dtype']}; prompt {r['prompt_len']} tokens ({r['image_tokens']} image), "
        f"answer {r['answer_len']} tokens; {r['n_parameters'] / 1e9:.3f} B parameters; median of {r['repeats']} after a warm-up.\n\n"
        f"{table}\n\nTarget: gradient_relevancy peak GPU memory <= {r['target_peak_ratio']}x generate (sdpa): "
        f"{'n/a (no GPU)' if r['meets_target'] is None else ('met' if r['meets_target'] else 'NOT met')}.\n"
        f"git {r['environment']['git_sha']}, torch {r['environment']['torch']}, transformers {r['environment']['transformers']}, "
        f"{r['finished']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
