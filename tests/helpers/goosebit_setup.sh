#!/usr/bin/env bash
# Makes the virtual environment the fleet tests run the goosebit DDI server from:
# a venv of its own (never the project's), holding the pinned versions of
# tests/helpers/goosebit-requirements.txt and the plugin in tests/helpers/goosebit_plugin
# (it registers our bundles as software). Idempotent: a second run only checks.
#
#   tests/helpers/goosebit_setup.sh [VENV]   (default: .goosebit-venv in the checkout)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${1:-${GOOSEBIT_VENV:-$repo/.goosebit-venv}}
requirements=$here/goosebit-requirements.txt
python=${PYTHON:-python3}
stamp=$venv/.setup-stamp
plugin=$here/goosebit_plugin
want=$(cat "$requirements" "$plugin/pyproject.toml" "$plugin"/goosebit_abupdate/*.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
echo "goosebit-setup: installing goosebit into $venv" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$requirements"
# Built from a copy: a build leaves its files next to the sources.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$plugin" "$build/plugin"
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$build/plugin"
"$venv/bin/python" -c "import importlib.util as u; assert u.find_spec('goosebit_abupdate')"
echo "$want" > "$stamp"
