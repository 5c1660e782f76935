"""Shrink a confidence-only run for committing: keep summary.json (all the leaderboard reads) and
replace samples.jsonl (maps inline, ~1.2 KB a line) by per_sample.csv: id, the answer's accuracy
and the per-sample uncertainty that confidence_auroc scores (enough to recompute the AUROC).

    python benchmarks/compact_confidence_run.py RUN_DIR...
"""

import csv
import sys
from pathlib import Path

from xbench.records import SAMPLES, read_records


def compact(run_dir: Path) -> None:
    records = read_records(run_dir / SAMPLES)
    if not records:
        raise SystemExit(f"{run_dir}: no records to compact")
    with open(run_dir / "per_sample.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["id", "accuracy", "uncertainty", "error"])
        for r in records:
            out.writerow([r["id"], (r.get("scores") or {}).get("accuracy"),
                          (r.get("metrics") or {}).get("confidence_auroc"), r.get("error", "")])
    (run_dir / SAMPLES).unlink()


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        compact(Path(arg))
