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


V3_PARENT_CODES = {"MTH", "FTH", "STPPRN", "PRNFOST"}  # v3 RoleCode codes under PRN that a form records
V3_FAMILY_MEMBER_CODES = {"PRN", *V3_PARENT_CODES, "GRPRN", "SIB"}  # under FAMMEMB (GRPRN through EXT)


def _v3_codes(roles: tuple[str, ...]) -> set[str]:
    return {codes.PERSON_ROLES.row(r).code for r in roles if codes.PERSON_ROLES.row(r).system == codes.V3_ROLE_CODE}


def test_parent_covers_the_roles_v3_rolecode_puts_under_parent():
    assert _v3_codes(codes.ROLE_FAMILIES["parent"]) == V3_PARENT_CODES


def test_family_member_covers_the_roles_v3_rolecode_puts_under_family_member():
    assert _v3_codes(codes.ROLE_FAMILIES["other-family"]) == V3_FAMILY_MEMBER_CODES


def test_every_family_is_made_of_form_roles_and_covers_its_members_families():
    form_roles = set(codes.PERSON_ROLES.values())
    for general, covered in codes.ROLE_FAMILIES.items():
        assert {general, *covered} <= form_roles
        for member in covered:
            assert codes.roles_covered_by(member) <= codes.roles_covered_by(general)


def test_a_role_outside_every_family_covers_only_itself():
    assert codes.roles_covered_by("guardian") == {"guardian"}
    assert codes.roles_covered_by("court") == {"court"}


def test_every_form_role_may_be_named_for_an_exception_and_the_rest_are_casus_codes():
    assert set(codes.PERSON_ROLES.values()) < set(codes.EXCEPTION_RECIPIENT_ROLES.values())
    assert {"court", "police", "childrens-social-care"} <= set(codes.EXCEPTION_ONLY_RECIPIENTS.values())
    assert {r.system for r in codes.EXCEPTION_ONLY_RECIPIENTS} == {codes.CS_RECIPIENT_ROLE}


def test_the_integration_engineers_doc_shows_the_code_tables_the_code_has():
    from scripts.update_doc_tables import DOC, with_tables

    text = DOC.read_text(encoding="utf-8")
    assert with_tables(text) == text, "docs/integration-engineers.md drifted from the code tables: run python scripts/update_doc_tables.py"
