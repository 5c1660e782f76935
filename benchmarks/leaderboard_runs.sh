#!/usr/bin/env bash
# Re-make the runs behind results/LEADERBOARD.md, then regenerate it.
#
# Every built-in method on the default model and task (xbench run's defaults), the same LIMIT
# samples (seed 0) for each, every registered metric (`--metrics all`: a plain run uses the quick
# `default` preset, without the faithfulness curves), the randomized-weights control
# (`--control randomized`, each map metric beside metric@control, and sanity_spearman); agreement is against
# gradient_relevancy, run first and then read from its run (`--reference-run`), so every other
# method is loaded and timed exactly as it is alone. Runs go to results/runs/<model>/<method>/.
# confidence_auroc needs wrong answers, and the default model answers about 0.3% of the test
# questions wrongly (none of the first 200): a second, cheaper run per method computes only it on
# CONF_LIMIT samples (default 2000), in results/runs/<model>/confidence/<method>/ (kept as
# summary.json + per_sample.csv); the leaderboard shows them as a second table (one table per
# task, model and sample count).
#
#   benchmarks/leaderboard_runs.sh [LIMIT]        # default 200 samples per method
#   METHODS="fastrm" benchmarks/leaderboard_runs.sh 200   # (re)make some runs only (the reference run must exist)
#   PHASES=confidence benchmarks/leaderboard_runs.sh       # only the confidence runs (PHASES="main confidence")
#
# The leaderboard alone, from the committed runs (seconds):
#   xbench leaderboard results/runs --output results/LEADERBOARD.md
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-200}
CONF_LIMIT=${CONF_LIMIT:-2000}
PHASES=${PHASES:-main confidence}
# Small forwards on a shared CPU: one thread per process is much faster and steadier than two
# threads contending (each run's summary records the device it ran on).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

MODEL=$(python -c "from xbench.runner import DEFAULT_MODEL; print(DEFAULT_MODEL)")
REFERENCE=$(python -c "from xbench.runner import DEFAULT_REFERENCE; print(DEFAULT_REFERENCE)")
ALL_METHODS=$(python - <<'EOF'
from xbench.plugins import build
reg = build(load_entry_points=False).registries
print(" ".join(e.name for e in reg.methods if e.origin.startswith("built-in")))
EOF
)
METHODS=${METHODS:-$ALL_METHODS}
OUT=results/runs/$MODEL
mkdir -p "$OUT"
TIMES="$OUT/wall_times.txt"
echo "# wall time per run (s), LIMIT=$LIMIT, CONF_LIMIT=$CONF_LIMIT, OMP_NUM_THREADS=$OMP_NUM_THREADS, $(date -u +%FT%TZ)" >> "$TIMES"

run_one() {  # method, extra flags...
    local method=$1; shift
    rm -rf "${OUT:?}/$method"
    local start=$(date +%s.%N)
    xbench run --method "$method" --limit "$LIMIT" --seed 0 --control randomized --metrics all --out "$OUT/$method" --no-progress "$@"
    printf '%s %.1f\n' "$method" "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$TIMES"
}

run_confidence() {  # method
    local method=$1
    rm -rf "${OUT:?}/confidence/$method"
    local start=$(date +%s.%N)
    xbench run --method "$method" --limit "$CONF_LIMIT" --seed 0 --metrics confidence_auroc \
        --out "$OUT/confidence/$method" --no-progress
    python benchmarks/compact_confidence_run.py "$OUT/confidence/$method"  # summary + per-sample csv only
    printf '%s[confidence] %.1f\n' "$method" "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$TIMES"
}

if [[ " $PHASES " == *" main "* ]]; then
    case " $METHODS " in *" $REFERENCE "*) run_one "$REFERENCE" ;; esac
    for method in $METHODS; do
        [ "$method" = "$REFERENCE" ] && continue
        run_one "$method" --reference-run "$OUT/$REFERENCE"
    done
fi
if [[ " $PHASES " == *" confidence "* ]]; then
    for method in $METHODS; do
        run_confidence "$method"
    done
fi

start=$(date +%s.%N)
xbench leaderboard results/runs --output results/LEADERBOARD.md
printf 'leaderboard %.2f\n' "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$TIMES"
