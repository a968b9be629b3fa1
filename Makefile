# The two commands of the README: `make demo` and `make test`. Both set the machine up first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_work

.PHONY: setup demo test bench
setup:
	@bash recommend_env.sh

demo: setup
	$(VENV)/bin/avlformer demo --workdir $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
