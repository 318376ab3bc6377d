#!/usr/bin/env bash
# Prints a Python 3.12 interpreter for the public leap0 SDK's conformance tests (it needs 3.12+).
set -euo pipefail
works() { "$1" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; }
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -rV); do
    candidate=$(PYENV_VERSION=$version pyenv which python3 2>/dev/null) && works "$candidate" && { echo "$candidate"; exit 0; }
  done
fi
for candidate in /usr/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.13; do
  [[ -x $candidate ]] && works "$candidate" && { echo "$candidate"; exit 0; }
done
echo "no Python 3.12 found: install one (e.g. pyenv install 3.12) for the leap0 conformance tests" >&2
exit 1
