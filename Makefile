# Two entry points for a fresh machine; each creates the virtual environment and installs first.
#   make train   - trains configs/tiny.py on this machine's CPU (about a minute) into workdirs/tiny
#   make test    - runs the whole test suite, the slow end-to-end tests included
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/tiny

.PHONY: install train test clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python -m superclip_jax.main --config configs/tiny.py --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) workdirs
