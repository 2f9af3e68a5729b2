#!/usr/bin/env bash
# Runs the benchmarks named as arguments (default: all), one after another. Each prints a table
# and, as its last line of stdout, one JSON object with its figures and goal verdicts.
#   npm run bench                      # matching, order-latency, ledger, e2e
#   npm run bench -- ledger            # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ "${#names[@]}" -eq 0 ]; then names=(matching order-latency ledger e2e); fi
for name in "${names[@]}"; do
  echo "== bench/${name}.ts" >&2
  node --import tsx "bench/${name}.ts"
done
