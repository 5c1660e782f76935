"""How long loading the shipped default model takes, offline, each time in a fresh process.

    python benchmarks/zoo_load_time.py [--repeats 5] [--out results/default-model-study/load_time.json]

Per repeat, a new Python process (network refused at the socket level) times:
``import`` of xbench + torch + transformers and the plugin registry (``setup_s``); the
lazy imports of transformers' LLaVA/CLIP/Llama modules and processors, which any LLaVA
model pays once per process (``imports_s``); ``load_vlm("tiny-llava-easyvqa")`` (``load_s``:
locate, weights, tokenizer, processor, hashes); the same again (``reload_s``); and a first
greedy answer (``first_answer_s``). Medians over the repeats are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, socket, time
t0 = time.perf_counter()
def refuse(*a, **k):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
import torch, transformers
from xbench.plugins import default
from xbench.models import load_vlm
plugins = default()
t1 = time.perf_counter()
from transformers import AutoProcessor, LlavaForConditionalGeneration, PreTrainedTokenizerFast
import transformers.models.llava.modeling_llava, transformers.models.llava.processing_llava
import transformers.models.clip.modeling_clip, transformers.models.llama.modeling_llama
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
ti = time.perf_counter()
vlm = load_vlm("tiny-llava-easyvqa", plugins.registries, device="cpu")
t2 = time.perf_counter()
vlm = load_vlm("tiny-llava-easyvqa", plugins.registries, device="cpu")
t2b = time.perf_counter()
task = plugins.registries.tasks.get("easyvqa")()
sample = next(iter(task.samples(limit=1)))
t3 = time.perf_counter()
gen = vlm.generate([sample], [task.prompt(sample)], task.max_new_tokens)[0]
t4 = time.perf_counter()
print(json.dumps({"setup_s": t1 - t0, "imports_s": ti - t1, "load_s": t2 - ti, "reload_s": t2b - t2,
                  "first_answer_s": t4 - t3,
                  "question": sample.question, "answer": gen.text, "gold": sample.answers[0],
                  "threads": torch.get_num_threads()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results/default-model-study/load_time.json"))
    args = p.parse_args()
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    result = {
        "repeats": args.repeats,
        **{
            f"{k}_median": statistics.median(r[k] for r in runs)
            for k in ("setup_s", "imports_s", "load_s", "reload_s", "first_answer_s")
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
