# The README's commands: `make demo`, `make test` and `make bench`; each sets the machine up first when needed.
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

# Every benchmark, each run recorded as a JSON line in benchmarks/results/<name>.jsonl; then RESULTS.md from them.
bench: setup
	@for b in benchmarks/*.py; do n=$$(basename $$b .py); case $$n in report|compare_trees) continue;; esac; echo "== $$b"; \
		$(PY) benchmarks/report.py record $$n -- $(PY) $$b || exit 1; done
	$(PY) benchmarks/report.py write
