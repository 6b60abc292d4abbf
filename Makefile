# Two entry points for a fresh machine; each creates the virtual environment and installs first.
#   make train   - the demo: trains configs/demo_mnist.py on real MNIST digits on this machine's CPU
#                  (about 4 minutes), evaluates it (zero-shot, retrieval, linear probe) and plots its curves
#   make test    - runs the whole test suite, the slow end-to-end tests included
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo_mnist

.PHONY: install train test lint clean

# The package in editable mode with its test tools, at the versions CI last passed with (constraints.txt).
$(BIN)/.installed: pyproject.toml requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,interop]'
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python -m superclip_jax.main --config configs/demo_mnist.py --workdir $(WORKDIR)
	$(BIN)/python -m superclip_jax.plot $(WORKDIR)

lint: install
	$(BIN)/ruff check superclip_jax tests configs benchmarks

# Each test file runs in its own pytest process. Tests leave threads behind (Grain workers,
# Beam pools, Orbax's async savers, HTTP servers), and in one long process XLA's in-process
# CPU collectives on 8 fake devices were seen to deadlock or abort in a later file
# (tests/test_sharded_step.py's (2, 2, 2) mesh, which passes on its own). A crash in one file
# then also names that file and lets the others run. Every file's result counts.
TEST_FILES := $(sort $(wildcard tests/test_*.py))

test: install
	@failed=""; for f in $(TEST_FILES); do \
	  echo "== $$f"; \
	  $(BIN)/python -m pytest -q -p no:cacheprovider "$$f" || failed="$$failed $$f"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: all $(words $(TEST_FILES)) test files passed"

clean:
	rm -rf $(VENV) workdirs
