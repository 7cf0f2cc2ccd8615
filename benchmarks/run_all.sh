#!/usr/bin/env bash
# Run every benchmark in --quick mode (~20 s each) and print their summary lines.
#   ./benchmarks/run_all.sh            # quick
#   ./benchmarks/run_all.sh --full     # the default (longer, ~60-90 s each; traces ~3 min) runs
# Each script's full output (.txt) and numbers (.json) go to $BENCH_OUT (default: a new temp dir).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODE=--quick
[ "${1:-}" = "--full" ] && MODE=
OUT=${BENCH_OUT:-$(mktemp -d -t saelab-bench-XXXXXX)}
mkdir -p "$OUT"
status=0
for b in capture early_stop store checksum extract_rss int8_load traces train encode contrast patch report stream scaling ray; do
    echo "== bench_$b $MODE" >&2
    start=$(date +%s)
    if "$PY" "benchmarks/bench_$b.py" $MODE --json "$OUT/$b.json" >"$OUT/$b.txt" 2>&1; then
        echo "   done in $(( $(date +%s) - start )) s" >&2
    else
        echo "   bench_$b failed (exit $?); see $OUT/$b.txt" >&2
        tail -n 5 "$OUT/$b.txt" >&2
        status=1
    fi
done
echo
echo "summary ($OUT):"
grep -h '^SUMMARY' "$OUT"/*.txt || true
if grep -h '^SUMMARY' "$OUT"/*.txt 2>/dev/null | grep -q ' FAIL'; then
    echo "(FAIL = a target missed; the tables are in $OUT/*.txt)"
fi
exit $status
