#!/bin/sh
# Run every fuzz target one after another on one core, SECONDS each (default 600).
# Usage: [TARGETS="jose uris"] conformance/fuzz/run_all.sh [SECONDS] [OUTDIR]   (see docs/fuzzing.md)
set -u
SECONDS_EACH=${1:-600}
OUT=${2:-artifacts/fuzz}
PY=${PYTHON:-.venv/bin/python}
HERE=$(dirname "$0")
for target in ${TARGETS:-params credentials jose registration mcp_methods uris router}; do
    mkdir -p "$OUT/corpus_$target" "$OUT/crashes_$target"
    start=$(date +%s)
    "$PY" "$HERE/fuzz_$target.py" "$OUT/corpus_$target" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
        -artifact_prefix="$OUT/crashes_$target/" -rss_limit_mb=2048 >"$OUT/$target.log" 2>&1
    status=$?
    end=$(date +%s)
    runs=$(grep -Eo 'Done [0-9]+ runs' "$OUT/$target.log" | tail -1)
    echo "$target status=$status seconds=$((end - start)) $runs" >>"$OUT/summary.txt"
done
