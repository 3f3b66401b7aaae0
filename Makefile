# Every target sets up .venv first if it is missing or pyproject.toml/constraints.txt changed.
# Pass Hydra overrides with ARGS, e.g. `make train ARGS="trainer.max_epochs=5 optimizer=sgd"`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-fast tb docs bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	# torchattacks is the tests' reference for the attacks (never imported by imgrec). It pins requests~=2.25,
	# which conflicts with mkdocs-material; it runs on torch, numpy and scipy alone, so it comes without its pins.
	$(BIN)/python -m pip install --no-deps "torchattacks>=3.5,<4"
	touch $(STAMP)

train: install
	$(BIN)/imgrec-train $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

# unit + integration only: skips the subprocess smoke tests
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

# the side-by-side benchmark (issue #7): imgrec vs a plain loop vs Lightning; appends to BENCHMARKS.md
bench: install
	$(BIN)/python -m pip install -c constraints.txt -e ".[bench]"
	$(BIN)/python scripts/bench.py $(ARGS)

# every benchmark task at toy size, about a minute; prints the report, appends nothing
bench-quick: install
	$(BIN)/python scripts/bench.py --quick $(ARGS)

tb: install
	$(BIN)/tensorboard --logdir outputs $(ARGS)

# the documentation site (docs/, mkdocs material) into site/; strict: a broken link fails the build
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache site
