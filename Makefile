# The two front-door commands: `make demo` and `make test`. Each builds/updates .venv (Python 3.12) itself.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml scripts/find_python312.sh
	@set -e; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
	  python312=$$(scripts/find_python312.sh); \
	  echo "creating $(VENV) with $$python312"; \
	  rm -rf $(VENV); "$$python312" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[data,test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -n auto

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
