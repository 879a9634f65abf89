#!/usr/bin/env bash
# Install the package into ./.venv, back up a sample tree at two levels, restore it and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q .
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/source
mkdir -p "$src/docs" "$src/empty"
head -c 8000000 /dev/urandom > "$src/big.bin"
printf 'hello\n' > "$src/docs/readme.txt"
ln -s docs/readme.txt "$src/link"
cli=.venv/bin/freezer-rsyncv2
$cli backup --path-to-backup "$src" --container "$work/store" --backup-name demo
# A 7-byte insert near the start of the big file: level 1 stores a small delta.
python3 - "$src/big.bin" <<'PY'
import sys
p = sys.argv[1]
data = open(p, 'rb').read()
open(p, 'wb').write(data[:100] + b'INSERT!' + data[100:])
PY
rm "$src/docs/readme.txt"
printf 'new file\n' > "$src/docs/new.txt"
$cli backup --path-to-backup "$src" --container "$work/store" --backup-name demo
$cli list --container "$work/store"
$cli restore --container "$work/store" --backup-name demo --restore-abs-path "$work/restored"
diff -r --no-dereference "$src" "$work/restored"
echo "demo: restored tree is identical to the source"
