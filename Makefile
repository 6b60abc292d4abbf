# Two entry points for a fresh machine; each creates the virtual environment and installs first.
#   make train   - the demo: trains configs/demo_mnist.py on real MNIST digits on this machine's CPU
#                  (about 4 minutes), evaluates it (zero-shot, retrieval, linear probe) and plots its curves
#   make test    - runs the whole test suite, the slow end-to-end tests included (tests/run_suite.py)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo_mnist

.PHONY: install install-test train test lint clean

# Two installs into one environment, at the versions CI last passed with (constraints.txt):
# the package alone for the demo (no torch), and the test tools and the PyTorch clients on top for the tests.
$(BIN)/.installed: pyproject.toml requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed requirements-dev.txt requirements-interop.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,interop]'
	touch $@

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

train: install
	$(BIN)/python -m superclip_jax.main --config configs/demo_mnist.py --workdir $(WORKDIR)
	$(BIN)/python -m superclip_jax.plot $(WORKDIR)

lint: install-test
	$(BIN)/ruff check superclip_jax tests configs benchmarks

# Each test file runs in its own pytest process, two files at a time, the longest first
# (tests/run_suite.py says why); every file's result counts. TEST_JOBS=1 runs them one by one.
test: install-test
	$(BIN)/python tests/run_suite.py

clean:
	rm -rf $(VENV) workdirs
