# The two commands of the README: `make run` and `make test`. Both create the environment first
# if it is missing (envs/setup-venv.sh: idempotent, shared across clones, keyed by the pins).
SHELL := /bin/bash
VENV := .venv
CORES ?= all

.PHONY: env run test lint dryrun clean

env:
	@bash envs/setup-venv.sh

run: env
	$(VENV)/bin/snakemake --cores $(CORES)

test: env
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q -rs

lint: env
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/snakemake --lint

dryrun: env
	$(VENV)/bin/snakemake -n --cores $(CORES)

clean:
	rm -rf results .snakemake
