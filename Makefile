# The two set-up commands of the README. Each creates .venv and installs what it needs (pinned in
# pyproject.toml) on first use; a stamp keyed by pyproject.toml skips the install afterwards.
PYTHON ?= python3
VENV := .venv
HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
BASE_STAMP := $(VENV)/.installed-base-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(HASH)

.PHONY: demo test bench

demo: $(BASE_STAMP)
	$(VENV)/bin/dwconv-tvm demo

test: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(BENCH_STAMP)
	$(VENV)/bin/dwconv-tvm bench

$(BENCH_STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e ".[bench]"
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

$(BASE_STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@ $(BASE_STAMP)
