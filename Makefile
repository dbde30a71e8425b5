# patchlab: one command to set up and run the demo, one to set up and run the tests.
#   make demo    set up .venv if needed, train a small model on built-in data (CPU, a few minutes),
#                write a sample grid to reports/demo/samples.png
#   make test    set up .venv if needed, run the test suite
# The set-up installs the versions pinned in constraints.txt (those CI tests); pyproject.toml keeps ranges.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patchlab-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[notebooks,dev]'
	touch $@

demo: setup
	$(PY) -m patchlab train --run-dir runs/demo --config notebooks/params/demo.json
	$(PY) -m patchlab sample --run-dir runs/demo --sampler ddim --steps 100 --n 36 --borders \
		--out reports/demo/samples.png

test: setup
	$(PY) -m pytest -q

benchmark: setup
	$(PY) benchmarks/patch_modes.py

clean:
	rm -rf runs/demo .pytest_cache
