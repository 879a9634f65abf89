#!/usr/bin/env bash
# Install the package with its test extras into ./.venv, run the linters
# (flake8, mypy: tools/lint.sh) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real OpenStack Swift cluster for the Swift tests (tests/swiftserver.py
# starts it on free loopback ports): Debian's packages, installed once.  If
# they cannot be installed, those tests fail saying so; they never skip.
SWIFT_PACKAGES="swift-proxy swift-account swift-container swift-object memcached"
swift_installed() {
    local package
    for package in $SWIFT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}
if swift_installed; then
    :
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $SWIFT_PACKAGES >/dev/null
else
    echo "tools/test.sh: cannot install $SWIFT_PACKAGES (not root, or no apt-get):" \
         "the Swift tests will fail" >&2
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
set +e
bash tools/lint.sh
lint=$?
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected: that is a failure" >&2
    exit 1
fi
if [ "$rc" -eq 0 ] && [ "$lint" -ne 0 ]; then
    echo "the tests passed but the linters found problems (above)" >&2
    exit 1
fi
exit "$rc"
