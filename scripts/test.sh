#!/usr/bin/env bash
# Runs every *.test.ts in the repository, listed explicitly: Node 20's runner finds no .ts files
# by itself. A run that finds no file fails, and so does a file that runs no test
# (scripts/zero-tests-reporter.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find . \( -name node_modules -o -name .git -o -name dist \) -prune -o -name '*.test.ts' -print | sed 's|^\./||' | sort)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test files found" >&2
  exit 1
fi
# The example workloads carry their dependencies (onnxruntime-node, a pretrained model) inside
# their bundles: put them there first, so their tests run real inference instead of skipping.
node examples/prepare.mjs >&2
echo "running ${#files[@]} test files" >&2
# flush-before-exit.mjs: --test-force-exit must not cut a file's results off on their way to the runner.
exec node --import tsx --import "$PWD/scripts/flush-before-exit.mjs" --test --test-concurrency="${GRIDWORK_TEST_CONCURRENCY:-2}" --test-timeout=300000 --test-force-exit \
  --test-reporter=tap --test-reporter-destination=stdout \
  --test-reporter=./scripts/zero-tests-reporter.mjs --test-reporter-destination=stderr \
  "$@" "${files[@]}"
