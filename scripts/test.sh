#!/usr/bin/env bash
# Runs every test file, listed explicitly: Node 20's runner finds no .ts files by itself, and a
# run that finds none must fail rather than pass.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find packages examples bench -path '*/node_modules' -prune -o -name '*.test.ts' -print 2>/dev/null | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files found" >&2
  exit 1
fi
echo "running ${#files[@]} test files" >&2
exec node --import tsx --test --test-concurrency="${GRIDWORK_TEST_CONCURRENCY:-2}" --test-timeout=300000 --test-force-exit "$@" "${files[@]}"
