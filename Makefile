# Two entry points for a fresh machine; each creates the virtual environment and installs first.
#   make train   - the demo: trains configs/demo_mnist.py on real MNIST digits on this machine's CPU
#                  (about 4 minutes), evaluates it (zero-shot, retrieval, linear probe) and plots its curves
#   make test    - runs the whole test suite, the slow end-to-end tests included (one pytest run)
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
	$(BIN)/ruff format --check superclip_jax tests configs benchmarks

# One pytest run: two worker processes (pytest-xdist), each taking whole test files, the longest
# first (tests/file_seconds.json; `--record-seconds` rewrites it after a green run). TEST_WORKERS=0
# runs everything in this one process.
TEST_WORKERS ?= 2
test: install-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -rs

clean:
	rm -rf $(VENV) workdirs .cache
