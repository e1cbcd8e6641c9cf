# The two commands of the README: `make serve` (the app, on the embedded PostgreSQL unless
# DATABASE_URL is set) and `make test`. Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test bench policies install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

serve: install
	$(BIN)/chatbuffer serve

test: install
	$(BIN)/pytest

# The full benchmarks (minutes; see docs/benchmarks.md). Needs wrk: apt-get install wrk.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

# Replay a chat log through the buffering policies (README: "When is the customer done?"):
# make policies TRACE=my_chats.csv   (without TRACE: the generated traffic)
policies: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench policies $(if $(TRACE),--trace $(TRACE))
