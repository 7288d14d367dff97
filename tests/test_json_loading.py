"""Loading a JSON document: I-JSON (RFC 7493) or a structure issue naming what is wrong, never an exception."""

from __future__ import annotations

from fhir_adapter.fhir_structure import MAX_NUMBER_DIGITS, load_json


def test_a_repeated_member_is_refused_naming_it():
    document, issues = load_json('{"status": "withdrawn", "status": "active"}')
    assert document is None and [(i.code, i.expression) for i in issues] == [("structure", "status")]


def test_the_same_member_name_in_two_objects_is_not_a_repeat():
    document, issues = load_json('{"a": {"status": "active"}, "b": {"status": "active"}}')
    assert issues == [] and document["b"]["status"] == "active"


def test_an_integer_beyond_python_s_conversion_limit_is_refused():
    document, issues = load_json('{"n": ' + "9" * 5000 + "}")
    assert document is None and "digits" in issues[0].diagnostics


def test_an_integer_at_the_digit_limit_is_read():
    document, issues = load_json('{"n": -' + "9" * MAX_NUMBER_DIGITS + "}")
    assert issues == [] and document["n"] == -int("9" * MAX_NUMBER_DIGITS)


def test_a_lone_surrogate_is_refused_naming_where_it_is():
    document, issues = load_json('{"youngPerson": {"names": ["ok", "\\ud800x"]}}')
    assert document is None and issues[0].expression == "youngPerson.names[1]"


def test_a_surrogate_pair_is_read_as_the_character_it_encodes():
    document, issues = load_json('{"name": "\\ud83d\\ude00"}')
    assert issues == [] and document["name"] == "\U0001f600"


def test_nan_and_infinity_are_not_json_numbers():
    for constant in ("NaN", "Infinity", "-Infinity"):
        document, issues = load_json('{"n": ' + constant + "}")
        assert document is None and issues[0].code == "structure"
