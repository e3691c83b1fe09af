# Two commands do all set-up on a fresh bookworm machine:
#   make run    install what is missing, then boot the default matrix (Debian's kernels)
#   make test   install what is missing, then run the test suite (real boots included)
VENV      ?= .venv
PYTHON    ?= python3
STAMP     := $(VENV)/.installed
HARNESS   := $(VENV)/bin/hvo-harness
PYTEST    := $(VENV)/bin/pytest
RUN_ARGS  ?= --arch all --json hvo-results/r.json
TEST_ARGS ?=

.PHONY: run test faults bench deps venv fetch lint clean

run: deps venv
	$(HARNESS) run $(RUN_ARGS)

test: deps venv
	$(VENV)/bin/ruff check harness tests scripts
	$(PYTEST) $(TEST_ARGS)

# The fault suite (tests/test_faults.py): real faults (hangs, panics, a killed QEMU, a full
# disk, signals to the harness, ...), each judged as it should be. Ends with one line,
# `faults: N tried, N handled right`; non-zero on any miss.
faults: deps venv
	@summary=$$(mktemp); \
	HVO_FAULT_SUMMARY=$$summary $(PYTEST) -m fault -p no:cacheprovider $(TEST_ARGS); status=$$?; \
	line=$$(cat $$summary); rm -f $$summary; \
	echo "$${line:-faults: 0 tried, 0 handled right}"; \
	set -- $$line; \
	[ $$status -eq 0 ] && [ "$${2:-0}" -gt 0 ] && [ "$$2" = "$$4" ] || exit 1

# Speed, measured: harness overhead vs bare QEMU, and the default matrix serial vs -n 2.
bench: deps venv
	$(VENV)/bin/python scripts/bench.py

# Debian packages (QEMU 10 and clang-19 from bookworm-backports): idempotent, non-interactive.
deps:
	@bash scripts/install-host-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

fetch: deps venv
	$(HARNESS) fetch --arch all

lint: venv
	$(VENV)/bin/ruff check harness tests scripts

clean:
	rm -rf hvo-results .pytest_cache
