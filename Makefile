# payflow-lab: the workshop in two commands.
#
#   make lab    set up what a learner needs (.venv with the `lab` extra) and open the workshop
#   make test   set up everything (the `lab` and `test` extras) and run the whole test suite
#
# Both need only Python 3.11+ on the PATH (override with PYTHON=python3.12).
# `make lab` takes PORT=8888 and LAB_ARGS (more options for `jupyter lab`), for example
#   make lab PORT=8890 LAB_ARGS=--no-browser

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
LAB_STAMP := $(VENV)/.payflow-lab
STAMP    := $(VENV)/.payflow-installed
PORT     ?= 8888
# pytest-xdist workers: one per core, plus one for the browser tests, which mostly wait on JupyterLab
# and the story clock
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 1)' 2>/dev/null || echo 3)
LAB_ARGS ?=
# What the editable install is made of: a change to any of these reinstalls.
SETUP_FILES := pyproject.toml hatch_build.py $(shell find jupyter-config -type f -name '*.json' 2>/dev/null)
# JupyterLab refuses to start as root unless told to; workshop containers often run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: lab test test-fast lessons bench story chromium postgresql clean help

help:
	@echo "make lab      open the workshop in JupyterLab (creates $(VENV) on first use)"
	@echo "make test     run the whole test suite: unit, CLI, notebooks (nbval), browser"
	@echo "make lessons  re-execute the lesson notebooks and save their outputs"
	@echo "make bench    run the benchmarks (payflow-lab bench)"
	@echo "make story    the whole evolution, narrated (payflow-lab)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "payflow-lab needs Python 3.11 or newer; try make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A learner's environment: the engine and JupyterLab, none of the test tools.
$(LAB_STAMP): $(SETUP_FILES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	@touch $@

# A developer's (and CI's): the learner's plus everything the tests use.
$(STAMP): $(SETUP_FILES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lab,test]"
	@touch $@ $(LAB_STAMP)

# The file argument is a path from here; --notebook-dir is what the file browser shows. Learners
# get a read-only extension manager; no news prompt and no update check come with the package
# (jupyter-config/).
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --notebook-dir=lessons --LabApp.extension_manager=readonly $(ALLOW_ROOT) --port=$(PORT) $(LAB_ARGS) lessons/00_start_here.ipynb

# One pytest run on every core (pytest-xdist, one file or notebook per worker at a time, so a file's
# fixtures stay together): the browser tests are collected first, so one worker takes their file at once
# and drives the lessons one at a time (a JupyterLab server and Chromium of its own) while the other
# workers run the unit and CLI tests and the lessons under nbval.
test: $(STAMP) chromium postgresql
	$(BIN)/python -m pytest tests/browser tests lessons -n $(TEST_WORKERS) --dist loadfile \
		--nbval-lax --nbval-current-env --nbval-sanitize-with lessons/sanitize.cfg

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser -x -q

chromium:
	@sh tools/ensure-chromium

# PostgreSQL for the scale-out tests, the bench's scaleout group and lesson 08 (a throw-away cluster each time).
postgresql:
	@sh tools/ensure-postgresql

# Chromium draws the static PNG beside each plotly figure (tools/build_lessons.py).
lessons: $(STAMP) chromium
	$(BIN)/python tools/build_lessons.py

bench: $(STAMP)
	$(BIN)/payflow-lab bench

story: $(STAMP)
	$(BIN)/payflow-lab

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts dist build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
