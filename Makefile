# rtkit's two entry points: `make lab` opens the notebooks in JupyterLab and
# `make test` runs every check. Both create .venv on first use and reinstall
# the project into it only when pyproject.toml has changed since the last
# install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Marks the last `pip install -e '.[test]'`; pyproject.toml newer than this
# file means the dependencies may have changed.
INSTALL_STAMP := $(VENV)/.rtkit-installed
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-m "not browser"'.
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: help lab test lint format clean

help:
	@echo "make lab     open the notebooks in JupyterLab on 127.0.0.1"
	@echo "make test    run ruff, the test suite and the notebooks (nbval)"
	@echo "make lint    run ruff check and ruff format --check"
	@echo "make format  sort imports and format the code with ruff"
	@echo "make clean   remove .venv and the caches"

# Python 3.11 is the oldest version rtkit supports (requires-python in
# pyproject.toml). The check runs before the venv is created, so a too old
# interpreter fails here and not halfway through pip.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		found=$$($(PYTHON) --version 2>&1) || found="not found"; \
		echo "error: rtkit needs Python 3.11 or newer, but PYTHON=$(PYTHON) is: $$found" >&2; \
		echo "Install Python 3.11+ and pass it, e.g. make $(or $(MAKECMDGOALS),test) PYTHON=python3.12" >&2; \
		exit 1; \
	}
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(VENV) uses $$($(BIN)/python --version 2>&1), but rtkit needs Python 3.11 or newer." >&2; \
		echo "Run make clean, then make again with PYTHON set to a Python 3.11+ interpreter." >&2; \
		exit 1; \
	}
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# jupyter lab exits when started as root without --allow-root. Containers
# often run as root, so the flag is added there.
lab: $(INSTALL_STAMP)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

lint: $(INSTALL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALL_STAMP)
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

# Prints a TCP port that was free on 127.0.0.1 a moment ago.
FREE_PORT := import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])

# One pytest run covers tests/ and the notebooks, so its closing line counts
# both. Its exit status is make's: any failure, and also "no tests ran"
# (status 5), fails the target.
# The notebooks start rtkit on its default port, and RTKIT_PORT moves that
# default. Unless RTKIT_PORT is set, the run picks a free port, so a notebook
# server left running on 8765 from `make lab` does not fail the tests. The
# tests in tests/ ignore RTKIT_PORT (see tests/conftest.py).
test: lint
	RTKIT_PORT="$${RTKIT_PORT:-$$($(BIN)/python -c '$(FREE_PORT)')}" \
		$(BIN)/python -m pytest --nbval tests notebooks $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .jupyter-test build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
