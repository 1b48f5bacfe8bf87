#!/usr/bin/env bash
# Idempotent environment setup: Debian packages (when root), then .venv with pinned deps.
# Why a script and not Makefile lines: it must decide per package and stay fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES="python3-qgis qgis qgis-providers python3-gdal gdal-bin python3-venv python3-jsonschema xvfb pyqt5-dev-tools zip"
missing=""
for p in $DEB_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
  else
    echo "setup: missing Debian packages:$missing" >&2
    echo "setup: install them with: sudo apt-get install$missing" >&2
    exit 1
  fi
fi

PY=/usr/bin/python3
STAMP=.venv/.geoseg-stamp
want="$(cat requirements*.txt constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (system site-packages for QGIS, GDAL and numpy)"
  $PY -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
# `import geoseg` resolves to this checkout (the repo root is the plugin folder).
mkdir -p .build/pythonpath
ln -sfn "$(pwd)" .build/pythonpath/geoseg
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(pwd)/.build/pythonpath" > "$site/geoseg-checkout.pth"
echo "$want" > "$STAMP"
echo "setup: .venv ready"
