# payflow-lab: the workshop in two commands.
#
#   make lab    set everything up (.venv, packages) and open the workshop in JupyterLab
#   make test   set everything up and run the whole test suite (unit, CLI, notebooks, browser)
#
# Both need only Python 3.11+ on the PATH (override with PYTHON=python3.12).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.payflow-installed
PORT   ?= 8888

.PHONY: lab test test-fast lessons bench story chromium clean help

help:
	@echo "make lab      open the workshop in JupyterLab (creates $(VENV) on first use)"
	@echo "make test     run the whole test suite: unit, CLI, notebooks (nbval), browser"
	@echo "make lessons  re-execute the lesson notebooks and save their outputs"
	@echo "make bench    run the benchmarks (payflow-lab bench)"
	@echo "make story    the whole evolution, narrated (payflow-lab)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "payflow-lab needs Python 3.11 or newer; try make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[lab,test]"
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=lessons --port=$(PORT) 00_start_here.ipynb

test: $(STAMP) chromium
	$(BIN)/python -m pytest tests lessons --nbval-lax --nbval-current-env --nbval-sanitize-with lessons/sanitize.cfg

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser -x -q

chromium:
	@sh tools/ensure-chromium

lessons: $(STAMP)
	$(BIN)/python tools/build_lessons.py

bench: $(STAMP)
	$(BIN)/payflow-lab bench

story: $(STAMP)
	$(BIN)/payflow-lab

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
