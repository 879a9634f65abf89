#!/usr/bin/env bash
# Lint: flake8 over the code, tests and benchmarks, flynt (one string style:
# f-strings), then mypy with setup.cfg's [mypy] settings (strict on rsync/,
# stream/, fs/ and storage/).  Exits non-zero on any finding; uses
# ./.venv's tools when there is one.
set -uo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv/bin/python ]; then
    python=.venv/bin/python
fi
rc=0
echo "flake8: freezer_rsyncv2 tests benchmarks"
"$python" -m flake8 freezer_rsyncv2 tests benchmarks || rc=1
echo "flynt: freezer_rsyncv2 (messages are f-strings; logging keeps its lazy %s)"
"$python" -m flynt --dry-run --fail-on-change --quiet --line-length 120 freezer_rsyncv2 >/dev/null || {
    echo "flynt: %-formatting that could be an f-string (run flynt -ll 120 freezer_rsyncv2)"; rc=1; }
echo "mypy: freezer_rsyncv2 (settings in setup.cfg)"
# No cache: it would leave a .mypy_cache folder in the work tree.
"$python" -m mypy --cache-dir=/dev/null || rc=1
if [ "$rc" -eq 0 ]; then
    echo "lint: clean"
else
    echo "lint: findings above" >&2
fi
exit "$rc"
