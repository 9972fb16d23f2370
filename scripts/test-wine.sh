#!/usr/bin/env bash
# Runs the test suite with Deno's Windows build under Wine (prepared by
# scripts/wine-setup.sh), with the same permissions as `deno task test`.
# Extra arguments replace the default test path, e.g. tests/shm_test.ts.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .wine/env ]; then
  echo "test-wine: run scripts/wine-setup.sh first" >&2
  exit 2
fi
# shellcheck disable=SC1091
. .wine/env
# As in `deno task test`: no background release check skewing fd counts.
export DENO_NO_UPDATE_CHECK=1
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(tests/)
# Wine prints \r\n; strip it so the summary line parses like Linux's.
"$WINE" "$DENO_EXE" test --allow-ffi --allow-run --allow-read --allow-env \
  --allow-write --parallel "${paths[@]}" 2>&1 | tr -d '\r'
status=${PIPESTATUS[0]}
wineserver -k 2>/dev/null || true
exit "$status"
