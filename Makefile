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

# The data tests start threads, Grain worker processes, Beam pools and an HTTP server that outlive
# them; a JAX abort was seen in a later test when both ran in one process, so they get their own.
DATA_TESTS := tests/test_beam_runner.py tests/test_benchmark_sources.py tests/test_build.py \
              tests/test_pipeline.py tests/test_remote.py tests/test_tfds_source.py

test: install
	$(BIN)/python -m pytest -q $(DATA_TESTS)
	$(BIN)/python -m pytest -q $(addprefix --ignore=,$(DATA_TESTS))

clean:
	rm -rf $(VENV) workdirs
