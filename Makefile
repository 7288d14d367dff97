# The two commands a newcomer needs (see README): `make demo` and `make test`.
VENV ?= .venv
export CASUS_VENV := $(VENV)

.PHONY: demo test hardening bench install doc-tables

install:
	bash scripts/bootstrap.sh

demo: install
	$(VENV)/bin/fhir-adapter demo

test:
	bash scripts/bootstrap.sh --with-postgres
	$(VENV)/bin/ruff check fhir_adapter tests benchmarks
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python benchmarks/bench_mapping.py

hardening:
	bash scripts/bootstrap.sh --with-postgres
	CASUS_HARDENING_BUDGET=large $(VENV)/bin/python -m pytest tests/hardening -m hardening

doc-tables: install
	$(VENV)/bin/python scripts/update_doc_tables.py
