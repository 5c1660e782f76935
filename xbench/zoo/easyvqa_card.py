"""The model card (``README.md``) of ``tiny-llava-easyvqa`` from a training run's ``info``.

``info`` is what :func:`xbench.zoo.train_easyvqa.train` returns (recipe, parameter count,
wall times, hardware and, when evaluated, test accuracy by question kind); the card states
the configuration, prompt, recipe, results and the command that reproduces the run.
"""

from __future__ import annotations

from xbench.zoo.easyvqa_recipe import MODEL_NAME, Recipe, recipe_dict

CARD = "README.md"


def model_card(info: dict) -> str:
    """The model card (markdown) from a training run's ``info``."""
    r = info["recipe"]
    lines = [
        f"# {MODEL_NAME}",
        "",
        "A small LLaVA-architecture model (`LlavaForConditionalGeneration`: CLIP vision tower, linear-GELU-linear",
        "projector, Llama language model, word-level tokenizer over the easy-vqa vocabulary) trained by xbench from",
        "scratch on the easy-vqa train split. It is xbench's default model: explanations are only worth studying on a",
        "model that answers correctly, and it needs no download. Weights: `model.safetensors` (float32).",
        "",
        *_configuration(r["shape"], info["parameters"]),
        "## Prompt",
        "",
        "`USER: <image>\\n{question}\\nAnswer the question using a single word or phrase. ASSISTANT:` - the model",
        "answers with one word followed by `</s>`.",
        "",
        *_training_recipe(r),
        *_results(info),
        "## Reproduce",
        "",
        "```",
        reproduce_command(r),
        "```",
        "",
    ]
    return "\n".join(lines)


def _configuration(s: dict, parameters: int) -> list[str]:
    """The card's "Configuration" section: the architecture of shape ``s`` (:class:`TinyLlavaShape` as a dict)."""
    return [
        "## Configuration",
        "",
        "| part | setting |",
        "|---|---|",
        f"| vision tower | CLIP, {s['image_size']}px, patch {s['patch_size']} "
        f"({s['image_size'] // s['patch_size']}x{s['image_size'] // s['patch_size']} grid), "
        f"hidden {s['vision_hidden']}, {s['vision_layers']} layers, {s['vision_heads']} heads |",
        "| image features | `vision_feature_layer=-1` (last layer), strategy `default` (CLS dropped) |",
        f"| language model | Llama, hidden {s['text_hidden']}, {s['text_layers']} layers, {s['text_heads']} heads |",
        f"| parameters | {parameters:,} |",
        "| attention | eager (attention weights available) |",
        "",
    ]


def _training_recipe(r: dict) -> list[str]:
    """The card's "Training recipe" section from the recipe ``r`` (:func:`recipe_dict`)."""
    sampling = (
        "evenly over answer groups within each question kind (yes/no also split by negation)"
        if r.get("balance")
        else "uniformly"
    )
    return [
        "## Training recipe",
        "",
        f"- seed {r['seed']}; `torch.use_deterministic_algorithms(True)`; seeded data order and augmentation.",
        "- A. warm-up: vision tower + projector + a linear head classifying shape and colour from the mean image",
        f"  token; {r['warmup_steps']} steps, batch {r['warmup_batch']} images, AdamW lr {r['warmup_lr']}.",
        "- B. QA: whole model, teacher-forced cross-entropy on `answer </s>`, plus the warm-up loss at weight",
        f"  {r['aux_weight']}; {r['qa_steps']} steps, batch {r['qa_batch']} questions, AdamW lr {r['qa_lr']}.",
        f"  Questions are drawn {sampling}.",
        f"  A linear probe on the LM's hidden state after {r.get('probe_layer', 1)} layer(s) at the answer position predicts the",
        f"  colour and shape the question names, its negation and the image's shape and colour (weight {r.get('probe_weight', 0)}).",
        f"- Both phases: {r['lr_warmup']} linear warm-up steps then cosine decay, weight decay {r['weight_decay']},",
        f"  gradient clipping {r['grad_clip']}, horizontal flips and shifts up to {r['max_shift']} px (edge-replicated).",
        "- Shape/colour labels of the images come from the train questions (named, or decided by yes/no answers).",
        "- The auxiliary heads are dropped; the shipped weights are the LLaVA model's alone.",
        "",
    ]


def _results(info: dict) -> list[str]:
    """The card's "Results" section: hardware, wall times and, when ``info`` has ``test``, accuracy by kind."""
    w = info["wall_s"]
    lines = [
        "## Results",
        "",
        f"Hardware: {info['hardware']}; torch {info['torch']}.",
        f"Wall time: {w['train']:.0f} s training, {w.get('evaluate', 0):.0f} s evaluation, {w['total']:.0f} s in all"
        + (f" ({info['cpu_s']:.0f} s of CPU time)" if "cpu_s" in info else "")
        + "; wall time grows when other jobs share the cores.",
        "",
    ]
    if "test" in info:
        t = info["test"]
        lines += [
            f"Greedy answers on the easy-vqa test split ({t['n']:,} questions), exact match:",
            "",
            "| question kind | questions | accuracy |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v['n']:,} | {v['accuracy']:.4f} |" for k, v in t["by_kind"].items()]
        lines += [f"| **all** | {t['n']:,} | **{t['accuracy']:.4f}** |", ""]
    return lines


def reproduce_command(recipe: dict) -> str:
    """The ``xbench zoo train`` command line giving ``recipe`` (flags only where it differs from the default)."""
    default = recipe_dict(Recipe())
    cmd = f"xbench zoo train {MODEL_NAME} --out DIR --seed {recipe['seed']}"
    for key in ("warmup_steps", "qa_steps", "threads", "eval_limit"):
        if recipe.get(key) != default[key]:
            cmd += f" --{key.replace('_', '-')} {recipe[key]}"
    return cmd
