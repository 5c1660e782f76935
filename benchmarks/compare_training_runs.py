"""Compare two ``xbench zoo train`` outputs: test accuracy by kind, weight checksums, times.

python benchmarks/compare_training_runs.py SHIPPED_DIR REPRODUCED_DIR [--out results/default-model-study/reproduce.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def describe(path: Path) -> dict:
    info = json.loads((path / "training.json").read_text())
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    return {
        "dir": str(path),
        "command": info.get("command"),
        "xbench_git_sha": info.get("xbench_git_sha"),
        "hardware": info["hardware"],
        "wall_s": info["wall_s"],
        "cpu_s": info.get("cpu_s"),
        "accuracy": info["test"]["accuracy"],
        "accuracy_by_kind": {k: v["accuracy"] for k, v in info["test"]["by_kind"].items()},
        "n_test": info["test"]["n"],
        "model_safetensors_sha256": digest,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shipped", type=Path)
    p.add_argument("reproduced", type=Path)
    p.add_argument("--out", type=Path, default=Path("results/default-model-study/reproduce.json"))
    args = p.parse_args()
    a, b = describe(args.shipped), describe(args.reproduced)
    result = {
        "shipped": a,
        "reproduced": b,
        "accuracy_difference_points": 100 * (b["accuracy"] - a["accuracy"]),
        "identical_weights": a["model_safetensors_sha256"] == b["model_safetensors_sha256"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
