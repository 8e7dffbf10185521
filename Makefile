# The two commands of this project (see README): `make demo` and `make test`.
# Both create / update the virtualenv themselves (tools/bootstrap.sh; variables: VENV, TORCH_SPEC, SYSTEM_SITE).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: setup demo test test-quick lint format clean

setup:
	@VENV=$(VENV) tools/bootstrap.sh

demo: setup
	$(PY) -m maeast_fairseq.cli.demo --out runs/demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Development only: the suite without the `slow` tests (fairseq-hydra-train / torchrun / CLI / demo subprocess runs).
# `make test` (the full suite) is the check that counts.
test-quick: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The linter (ruff; rules in pyproject.toml): CI runs it before the tests. `make format` applies its safe fixes.
lint: setup
	$(PY) -m ruff check .

format: setup
	$(PY) -m ruff check --fix .

clean:
	rm -rf runs outputs .pytest_cache
