# The two entry points the README opens with. Both create .venv on first use.
.PHONY: setup repro test

# Stage commands in dvc.yaml call `python`; put the project's venv first on PATH.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

setup:
	bash scripts/setup.sh

repro: setup
	dvc repro

test: setup
	python -m pytest
