"""Task data written in the official layouts that tasks/vqa_v2.py, gqa.py and pope.py read.

The writers take entries as the official files hold them and the images to save, and lay them
out as the downloads do (flat): VQA v2's questions and annotations files beside a ``<split>/``
folder of ``COCO_<split>_<image_id:012d>.jpg``; GQA's ``<split>_balanced_questions.json`` (and
``<split>_sceneGraphs.json``) beside ``images/<imageId>.jpg``; POPE's ``<source>_pope_<split>.json``
(JSON lines) beside ``val2014/`` (and COCO ``instances_val2014.json`` when given). The task tests
build their fixtures with them.

:func:`easyvqa_official` builds whole data sets from easy-vqa's generated images (one coloured
shape on a plain background; the ``easy-vqa`` package): VQA v2 ``train2014`` from the train
split's questions, and VQA v2 ``val2014``, GQA ``testdev`` and POPE (``random``, ``popular``,
``adversarial``) on three disjoint sets of the test split's images, the GQA and POPE questions
phrased as those data sets phrase them. These are generated data in official formats: figures
made on them exercise a pipeline, they say nothing about COCO or GQA images.

``python -m xbench.taskgen OUT [--vqa-train N ...]`` writes them under ``OUT/{vqa_v2,gqa,pope}``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

#: the POPE splits :func:`easyvqa_official` writes
POPE_SPLITS = ("random", "popular", "adversarial")
MANIFEST = "generated.json"


# --------------------------------------------------------------------------- official layouts


def _save_images(folder: Path, images: Mapping[str, Any]) -> None:
    """Each ``name -> PIL image`` of ``images`` saved in ``folder`` (JPEG, quality 95, as COCO's files are JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.convert("RGB").save(folder / name, quality=95)


def write_vqa_v2(root: Path, items: Sequence[dict], split: str, images: Mapping[int, Any],
                 image_dir: str | None = None) -> Path:  # fmt: skip
    """The official VQA v2 files of ``items`` = ``[{qid, image_id, question, answers, answer_type?,
    annotated?}]`` (``annotated: False``: the question has no annotation) and ``images`` (image id ->
    PIL image) in ``root/<image_dir or split>/``."""
    root.mkdir(parents=True, exist_ok=True)
    questions = [{"image_id": it["image_id"], "question": it["question"], "question_id": it["qid"]} for it in items]
    annotations = [
        {
            "question_type": "what is",
            "multiple_choice_answer": it["answers"][0] if it["answers"] else "",
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(it["answers"])],
            "image_id": it["image_id"],
            "answer_type": it.get("answer_type", "other"),
            "question_id": it["qid"],
        }
        for it in items
        if it.get("annotated", True)
    ]
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
         "questions": questions}))  # fmt: skip
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(
        {"info": {}, "license": {}, "data_subtype": split, "annotations": annotations, "data_type": "mscoco"}))
    names = {f"COCO_{split}_{image_id:012d}.jpg": image for image_id, image in images.items()}
    _save_images(root / (split if image_dir is None else image_dir), names)
    return root


def gqa_question(image_id: str, text: str, answer: str, structural: str = "query", q_objects=(), a_objects=(),
                 full_objects=(), balanced: bool = True) -> dict:  # fmt: skip
    """One entry of a GQA balanced questions file (the fields the official files carry)."""
    return {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "x"}],
        "entailed": [],
        "equivalent": [],
        "question": text,
        "imageId": image_id,
        "isBalanced": balanced,
        "groups": {"global": None, "local": "x"},
        "answer": answer,
        "semanticStr": "select: x",
        "annotations": {
            "answer": {str(i): o for i, o in enumerate(a_objects)},
            "question": {f"{i}:{i + 1}": o for i, o in enumerate(q_objects)},
            "fullAnswer": {str(i): o for i, o in enumerate(full_objects)},
        },
        "types": {"detailed": "x", "semantic": "obj", "structural": structural},
        "fullAnswer": f"The answer is {answer}.",
    }


def write_gqa(root: Path, questions: Mapping[str, dict], split: str, images: Mapping[str, Any],
              scenes: Mapping[str, dict] | None = None) -> Path:  # fmt: skip
    """GQA's ``<split>_balanced_questions.json`` (question id -> :func:`gqa_question`), the scene
    graphs when given, and ``images`` (image id -> PIL image) as ``images/<id>.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}_balanced_questions.json").write_text(json.dumps(questions))
    if scenes is not None:
        (root / f"{split}_sceneGraphs.json").write_text(json.dumps(scenes))
    _save_images(root / "images", {f"{image_id}.jpg": image for image_id, image in images.items()})
    return root


def write_pope(root: Path, lines: Sequence[dict], split: str, images: Mapping[str, Any], *,
               instances: dict | None = None, source: str = "coco", raw: str | None = None) -> Path:  # fmt: skip
    """POPE's ``<source>_pope_<split>.json`` as JSON lines (or the text ``raw``), COCO
    ``instances_val2014.json`` when given, and ``images`` (file name -> PIL image) in ``val2014/``."""
    root.mkdir(parents=True, exist_ok=True)
    text = raw if raw is not None else "".join(json.dumps(line) + "\n" for line in lines)
    (root / f"{source}_pope_{split}.json").write_text(text)
    if instances is not None:
        (root / "instances_val2014.json").write_text(json.dumps(instances))
    _save_images(root / "val2014", images)
    return root


# --------------------------------------------------------------------------- from easy-vqa


def _easyvqa_split(split: str) -> tuple[list[tuple[str, str, int]], dict[int, Path], dict[int, tuple[str, str]]]:
    """``(questions, image paths, labels)`` of an easy-vqa split: its (question, answer, image id)
    triples, its image files, and each image's (shape, colour) where its questions tell both."""
    from xbench.tasks.easyvqa import COLOURS, SHAPES, package_folder, read_image_paths, read_questions
    from xbench.zoo.easyvqa_data import image_labels

    folder = package_folder() / split
    texts, answers, image_ids = read_questions(folder / "questions.json")
    triples = [t for t in zip(texts, answers, image_ids) if isinstance(t[0], str) and isinstance(t[2], int)]
    labels = image_labels(*zip(*triples)) if triples else {}
    known = {i: (SHAPES[s], COLOURS[c]) for i, (s, c) in labels.items() if s >= 0 and c >= 0}
    return triples, read_image_paths(folder / "images"), known


def _open_images(paths: Mapping[int, Path], ids) -> dict[int, Any]:
    from PIL import Image

    out = {}
    for i in ids:
        with Image.open(paths[i]) as im:
            out[i] = im.convert("RGB")
    return out


def _vqa_items(triples, keep_images, limit: int, rng: random.Random, first_qid: int) -> list[dict]:
    """VQA v2 items for up to ``limit`` easy-vqa questions on ``keep_images`` (10 identical human answers)."""
    chosen = [t for t in triples if t[2] in keep_images]
    rng.shuffle(chosen)
    return [{"qid": first_qid + k, "image_id": i, "question": q, "answers": [a] * 10,
             "answer_type": "yes/no" if a in ("yes", "no") else "other"}
            for k, (q, a, i) in enumerate(chosen[:limit])]  # fmt: skip


def _gqa_questions(labels: Mapping[int, tuple[str, str]], rng: random.Random) -> dict[str, dict]:
    """Two GQA-style questions per image: one open (query) and one verify or choose, about its shape and colour."""
    from xbench.tasks.easyvqa import COLOURS, SHAPES

    out = {}
    for image_id, (shape, colour) in labels.items():
        name = f"n{image_id}"
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        opened = rng.choice([(f"What color is the {shape}?", colour), ("Which shape is it?", shape)])
        pair = [colour, other_colour] if rng.random() < 0.5 else [other_colour, colour]
        closed = rng.choice([
            (f"Is the {shape} {colour}?", "yes", "verify"), (f"Is the {shape} {other_colour}?", "no", "verify"),
            (f"Is the {other_shape} {colour}?", "no", "verify"), (f"Is the shape {pair[0]} or {pair[1]}?", colour, "choose"),
        ])  # fmt: skip
        out[f"{image_id}0"] = gqa_question(name, opened[0], opened[1], "query")
        out[f"{image_id}1"] = gqa_question(name, closed[0], closed[1], closed[2])
    return out


def _pope_lines(labels: Mapping[int, tuple[str, str]], split: str, rng: random.Random) -> list[dict]:
    """A "yes" and a "no" POPE question per image. The splits differ in the absent object the "no"
    names: ``random`` a seeded other shape, ``popular`` the commonest other shape of these images,
    ``adversarial`` the image's colour on another shape (and the "yes" names the colour too)."""
    from xbench.tasks.easyvqa import SHAPES

    counts = Counter(shape for shape, _ in labels.values())
    lines = []
    for image_id, (shape, colour) in labels.items():
        others = [s for s in SHAPES if s != shape]
        if split == "random":
            present, absent = shape, rng.choice(others)
        elif split == "popular":
            present, absent = shape, max(others, key=lambda s: (counts[s], s))
        else:
            present, absent = f"{colour} {shape}", f"{colour} {rng.choice(others)}"
        image = f"COCO_val2014_{image_id:012d}.jpg"
        for obj, label in rng.sample([(present, "yes"), (absent, "no")], 2):
            article = "an" if obj[0] in "aeiou" else "a"
            lines.append({"question_id": len(lines) + 1, "image": image,
                          "text": f"Is there {article} {obj} in the image?", "label": label})  # fmt: skip
    return lines


def easyvqa_official(root: Path, *, vqa_train: int = 4000, vqa_val: int = 1500, gqa_images: int = 300,
                     pope_images: int = 300, seed: int = 0) -> dict[str, Path]:  # fmt: skip
    """Write VQA v2 (``train2014``: ``vqa_train`` easy-vqa train questions; ``val2014``: up to
    ``vqa_val`` test questions), GQA ``testdev`` (2 questions on each of ``gqa_images`` test images)
    and POPE (the three splits, 2 questions on each of ``pope_images`` test images) under
    ``root/{vqa_v2,gqa,pope}``. The three held-out sets use disjoint test images; GQA's and POPE's
    have a known shape and colour. Writes ``root/generated.json`` (what was made, from what); returns the folders."""
    rng = random.Random(seed)
    train, train_paths, _ = _easyvqa_split("train")
    test, test_paths, test_labels = _easyvqa_split("test")
    pool = sorted(test_labels)
    rng.shuffle(pool)
    gqa_ids, pope_ids = pool[:gqa_images], pool[gqa_images : gqa_images + pope_images]
    val_ids = set(test_paths) - set(gqa_ids) - set(pope_ids)
    root = Path(root)
    dirs = {"vqa_v2": root / "vqa_v2", "gqa": root / "gqa", "pope": root / "pope"}
    items = _vqa_items(train, set(train_paths), vqa_train, rng, first_qid=1)
    write_vqa_v2(dirs["vqa_v2"], items, "train2014", _open_images(train_paths, {it["image_id"] for it in items}))
    items = _vqa_items(test, val_ids, vqa_val, rng, first_qid=10_000_000)
    write_vqa_v2(dirs["vqa_v2"], items, "val2014", _open_images(test_paths, {it["image_id"] for it in items}))
    write_gqa(dirs["gqa"], _gqa_questions({i: test_labels[i] for i in gqa_ids}, rng), "testdev",
              {f"n{i}": im for i, im in _open_images(test_paths, gqa_ids).items()})  # fmt: skip
    pope_images_ = {f"COCO_val2014_{i:012d}.jpg": im for i, im in _open_images(test_paths, pope_ids).items()}
    for split in POPE_SPLITS:
        write_pope(dirs["pope"], _pope_lines({i: test_labels[i] for i in pope_ids}, split, rng), split, pope_images_)
    manifest = {
        "generated": "xbench.taskgen.easyvqa_official: easy-vqa's generated images (one coloured shape each) "
        "in official VQA v2 / GQA / POPE layouts; not COCO or GQA images",
        "sizes": {"vqa_train": vqa_train, "vqa_val": vqa_val, "gqa_images": gqa_images, "pope_images": pope_images},
        "seed": seed,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xbench.taskgen", description=__doc__.split("\n\n")[2])
    p.add_argument("out", type=Path)
    p.add_argument("--vqa-train", type=int, default=4000, help="VQA v2 train2014 questions (default 4000)")
    p.add_argument("--vqa-val", type=int, default=1500, help="VQA v2 val2014 questions, at most (default 1500)")
    p.add_argument("--gqa-images", type=int, default=300, help="GQA testdev images, 2 questions each (default 300)")
    p.add_argument("--pope-images", type=int, default=300, help="POPE images, 2 questions each per split (default 300)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    dirs = easyvqa_official(a.out, vqa_train=a.vqa_train, vqa_val=a.vqa_val, gqa_images=a.gqa_images,
                            pope_images=a.pope_images, seed=a.seed)  # fmt: skip
    print("\n".join(f"{name}: {path}" for name, path in dirs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
