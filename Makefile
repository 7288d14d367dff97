# The two commands a newcomer needs (see README): `make demo` (PORT=8080 by default) and `make test`.
VENV ?= .venv
PORT ?= 8080
export CASUS_VENV := $(VENV)

.PHONY: demo test hardening bench install package package-tools doc-tables

install:
	bash scripts/bootstrap.sh

demo: install
	$(VENV)/bin/fhir-adapter demo --port $(PORT)

test:
	bash scripts/bootstrap.sh --with-postgres
	$(VENV)/bin/ruff check fhir_adapter tests benchmarks scripts
	$(VENV)/bin/ruff format --check fhir_adapter tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest
	bash scripts/check_wheel.sh

bench: install
	$(VENV)/bin/python benchmarks/bench_mapping.py

hardening:
	bash scripts/bootstrap.sh --with-postgres
	CASUS_HARDENING_BUDGET=large $(VENV)/bin/python -m pytest tests/hardening -m hardening

# The FHIR NPM packages of the CASUS profiles (profiles/package/). Snapshots come from a pinned Node tool
# that package-tools installs into the ignored .cache/ (npm ci from tools/fhir-package/package-lock.json).
package-tools:
	bash tools/fhir-package/install.sh

package: install package-tools
	$(VENV)/bin/fhir-adapter profiles package

doc-tables: install
	$(VENV)/bin/python scripts/update_doc_tables.py
