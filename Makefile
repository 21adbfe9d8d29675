# The two commands of the README. Both create the virtual environment on first use.
#   make demo   runs the demo DAG (config.yaml: toy data, tiny models) with 2 cores
#   make test   runs the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
STAMP := $(VENV)/.ctrlbench-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --workflow-profile profiles/default

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
