#!/usr/bin/env bash
# Move CI to today's releases: install every extra unpinned into a fresh venv, run the whole suite, and only when it
# passes rewrite .ci/constraints.txt from that venv. Then widen pyproject.toml's tested ranges to match.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[probe,report,dev,torchtune,liger,trl,web]'
python -m pytest -q -p no:cacheprovider
{
  sed -n '1,3p' .ci/constraints.txt
  python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
} > .ci/constraints.txt.new
mv .ci/constraints.txt.new .ci/constraints.txt
echo "rewrote .ci/constraints.txt; check the extras' ranges in pyproject.toml" >&2
