# The two front-door commands: `make demo` and `make test`. Each builds/updates .venv (Python 3.12) itself.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean experiments experiments-gpu experiments-notebooks experiments-smoke \
        notebooks
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml scripts/find_python312.sh
	@set -e; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
	  python312=$$(scripts/find_python312.sh); \
	  echo "creating $(VENV) with $$python312"; \
	  rm -rf $(VENV); "$$python312" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[data,test,notebooks]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -n auto

# Issue 15's experiments (experiments/README.md). experiments-gpu: every experiment script, run
# by GPU_PY (a Python with jax[cuda]; each script fits one 10-minute H200 call, and they share the
# `small` pair trained into SCALING_WORK by the first), writes experiments/results/scaling/*.json;
# experiments-notebooks executes the notebooks headless on those results and keeps the outputs.
# experiments-smoke: every notebook runs its experiment on tiny CPU models (results in
# experiments/results/scaling/*_smoke.json; the notebooks' outputs are not saved).
GPU_PY       ?= python3
SCALING_WORK ?= /tmp/specdec_scaling
SCALING      := budget temperature training_tokens capacity batch depth time_split

experiments: experiments-gpu experiments-notebooks

experiments-gpu:
	@set -e; for e in $(SCALING); do \
	  PYTHONPATH=. $(GPU_PY) -m experiments.scaling.$$e --work $(SCALING_WORK); done

experiments-notebooks: $(STAMP)
	PYTHONPATH=. $(PY) experiments/notebooks/run_notebooks.py --save

experiments-smoke: $(STAMP)
	PYTHONPATH=. $(PY) experiments/notebooks/run_notebooks.py --smoke

notebooks: $(STAMP)
	PYTHONPATH=. $(PY) experiments/notebooks/make_notebooks.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
