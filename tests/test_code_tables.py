"""The code tables and the published form schema name the same closed lists."""

from __future__ import annotations

from fhir_adapter.form import information_type_codes, person_role_codes
from fhir_adapter.mappings import codes


def test_information_type_table_matches_the_form_schema():
    assert set(codes.INFORMATION_TYPES.values()) == information_type_codes()


def test_person_role_table_matches_the_form_schema():
    assert set(codes.PERSON_ROLES.values()) == person_role_codes()


def test_every_table_maps_each_coding_back_to_its_value():
    for table in codes.ALL_TABLES:
        for row in table:
            assert table.from_coding(table.to_coding(row.value)) == row.value


def test_the_integration_engineers_doc_shows_the_code_tables_the_code_has():
    from scripts.update_doc_tables import DOC, with_tables

    text = DOC.read_text(encoding="utf-8")
    assert with_tables(text) == text, "docs/integration-engineers.md drifted from the code tables: run python scripts/update_doc_tables.py"
