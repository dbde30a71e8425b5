# patchlab: one command to set up and reproduce the study, one to set up and run the tests.
#   make reproduce  set up .venv if needed, run the notebooks with the default profile (CPU, about 30 minutes from scratch):
#                   small models trained on built-in data, compared in results/default/ (not tracked by git)
#   make reports    the same, written to the committed report reports/default/ (for maintainers)
#   make test       set up .venv if needed, run the test suite (CI runs this)
#   make test-fast  the same without the tests marked slow (about a minute on 2 cores; for the edit-test loop)
#   make demo       set up .venv if needed, train one small model, write reports/demo/samples.png
#   make recipes    the recipe study (issue 30): the paper's training objective against v + Min-SNR and EDM on
#                   the digits, N = 1 and 2, two seeds, learning curves and a sampler sweep, written to
#                   reports/recipes/ (two hours or so on 2 cores; runs in runs/recipes/ are reused)
#   make digits-longer  retrain the digits report's N = 1 alone for longer (reports/digits/n1_longer/config.json:
#                   3.5x a digits run's steps, on one core) and rewrite its curve, the report's README and the findings
# The set-up installs the versions pinned in constraints.txt (those CI tests); pyproject.toml keeps ranges.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patchlab-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup reproduce reports demo recipes digits-longer test test-fast benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[data,metrics,notebooks,dev]'
	touch $@

reproduce: setup
	$(PY) -m patchlab reproduce --profile default

reports: setup
	$(PY) -m patchlab reproduce --profile default --publish

demo: setup
	$(PY) -m patchlab train --run-dir runs/demo --config notebooks/params/demo.json
	$(PY) -m patchlab sample --run-dir runs/demo --sampler ddim --steps 100 --n 36 --borders \
		--out reports/demo/samples.png

recipes: setup
	$(PY) -m patchlab.study.recipes --out reports/recipes

LONGER := reports/digits/n1_longer
digits-longer: setup
	$(PY) -m patchlab train --run-dir runs/digits-n1-longer --config $(LONGER)/config.json \
		--curve-every 750 --curve-samples 256
	cp runs/digits-n1-longer/curve.csv runs/digits-n1-longer/metrics.csv $(LONGER)/
	$(PY) -m patchlab reproduce --profile digits --publish --readme-only
	$(PY) -m patchlab findings

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m 'not slow'

benchmark: setup
	$(PY) benchmarks/patch_modes.py
	$(PY) benchmarks/metrics_separation.py
	$(PY) benchmarks/memory_vs_patches.py
	$(PY) benchmarks/ddp_scaling.py --json reports/ddp_scaling_cpu.json

clean:
	rm -rf runs/demo results .pytest_cache
