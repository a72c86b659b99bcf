# The README's two commands: `make demo` (set up + run the main job) and `make test`.
PYTHON_VERSION := 3.12
VENV := .venv
STAMP := $(VENV)/.installed
DATA_DIR := $(CURDIR)/.q50_data
# DAGSTER_HOME is left to q50: unset, each collector database gets its own under its data folder,
# the same for `make demo` and `make ui` (so the UI shows the demo's runs).

.PHONY: demo test ui benchmark setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v python$(PYTHON_VERSION) >/dev/null 2>&1 && python$(PYTHON_VERSION) -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 \
	  || { echo "Python $(PYTHON_VERSION) is required (python$(PYTHON_VERSION) not found): install it, e.g. 'pyenv install $(PYTHON_VERSION)'."; exit 1; }
	python$(PYTHON_VERSION) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/q50 demo

test: $(STAMP)
	$(VENV)/bin/pytest

benchmark: $(STAMP)
	$(VENV)/bin/python -m benchmarks

ui: $(STAMP)
	$(VENV)/bin/q50 ui

clean:
	rm -rf $(VENV) $(DATA_DIR) *.egg-info
