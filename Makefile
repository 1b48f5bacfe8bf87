# GeoSeg developer and user commands. `make test` and `make demo` run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
PKG_FILES := __init__.py plugin.py metadata.txt resources.qrc LICENSE README.md core models adapter algorithms ui icons
export QT_QPA_PLATFORM ?= offscreen
export GDAL_PAM_ENABLED ?= NO
DEMO_OUT ?= demo_output

.PHONY: setup test demo bench gpucheck lint typecheck compile package screenshots docs clean

setup:
	@bash scripts/setup.sh

# tests/core first (no QGIS in the process), then tests/qgis and tests/e2e inside a real QGIS
# (the rule for each folder: tests/README.md).
test: setup
	$(PY) -m pytest -p no:pytest_qgis -W ignore::pytest.PytestConfigWarning -m core -q tests/core
	$(PY) -m pytest -q tests/qgis tests/e2e

demo: setup
	bash scripts/demo.sh $(DEMO_OUT)

bench: setup
	$(PY) -m benchmarks

# GeoSeg on a CUDA GPU (scripts/gpucheck.py): a short report, non-zero exit when a check fails; on a
# machine without CUDA one line saying so, exit 0. Never part of `make test`.
gpucheck: setup
	$(PY) scripts/gpucheck.py

# ruff's rules (complexity included, see pyproject.toml) and its formatting, without changing files.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy on the pure engine (geoseg.core, geoseg.models); configuration in pyproject.toml.
typecheck: setup
	$(VENV)/bin/mypy

compile: setup
	pyrcc5 -o resources.py resources.qrc

package: compile
	rm -rf .build/package && mkdir -p .build/package/geoseg dist
	cp -r $(PKG_FILES) resources.py .build/package/geoseg/
	find .build/package -name '__pycache__' -type d -prune -exec rm -rf {} +
	rm -f dist/geoseg-$(VERSION).zip
	cd .build/package && zip -qr ../../dist/geoseg-$(VERSION).zip geoseg
	@echo "built dist/geoseg-$(VERSION).zip"

clean:
	rm -rf .build dist resources.py .pytest_cache .ruff_cache $(DEMO_OUT)

# README pictures: real QGIS windows in an X server (Xvfb), driven on the sample scene and grabbed
# from the screen. The xcb platform overrides the offscreen one exported above.
screenshots: setup
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) scripts/screenshots.py docs/images

# README parameter tables, generated from the algorithm definitions.
docs: setup
	$(PY) scripts/paramdocs.py
