"""Hypothesis strategies that corrupt valid documents: what a confused or hostile client might send.

Each strategy draws a valid CASUS form (tests.strategies.consent_forms), renders it as the target
expects (the form, an R4 or an R5 Consent), then breaks it one way and returns the raw request body,
so byte-level damage (non-UTF-8, deep nesting, oversize) travels exactly as drawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from fhir_adapter.form import ConsentForm, form_to_json
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from tests.strategies import consent_forms

Path = tuple[str | int, ...]
RENDERERS: dict[str, Callable[[ConsentForm], dict[str, Any]]] = {"form": form_to_json, "r4": form_to_r4, "r5": form_to_r5}
UNKNOWN_CODES = ("zz-not-a-code", "PARENT", "Mother", "permit ", "", "http://example.org/unknown|x")
NESTING = 5_000
PLACEHOLDER = '"__casus_corruption_placeholder__"'


@dataclass(frozen=True)
class Corrupted:
    """A broken request body, what was done to it, and the valid form it was made from."""

    kind: str
    body: bytes
    source: ConsentForm


def paths(document: Any, prefix: Path = ()) -> list[Path]:
    """Every path to a value inside a JSON document (objects and arrays included), depth first."""
    found: list[Path] = []
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
    return found


def get(document: Any, path: Path) -> Any:
    for key in path:
        document = document[key]
    return document


def replaced(document: Any, path: Path, value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    get(copy, path[:-1])[path[-1]] = value
    return copy


def removed(document: Any, path: Path) -> Any:
    copy = json.loads(json.dumps(document))
    del get(copy, path[:-1])[path[-1]]
    return copy


def _other_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of a different JSON type than ``value``."""
    options: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ]
    return st.one_of(*options).filter(lambda v: type(v) is not type(value))


def _encode(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


@st.composite
def wrong_type(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    path = draw(st.sampled_from(paths(document)))
    return f"wrong type at {path[-1]}", _encode(replaced(document, path, draw(_other_type(get(document, path)))))


@st.composite
def missing_element(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    path = draw(st.sampled_from(paths(document)))
    return f"missing {path[-1]}", _encode(removed(document, path))


@st.composite
def unknown_code(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    strings = [p for p in paths(document) if isinstance(get(document, p), str)]
    path = draw(st.sampled_from(strings))
    return f"unknown code at {path[-1]}", _encode(replaced(document, path, draw(st.sampled_from(UNKNOWN_CODES))))


@st.composite
def contradictory_provisions(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    """Flip one choice so it contradicts what rides with it (a do-not-share with types, a deny holding permits),
    or repeat a choice with the opposite answer."""
    flips = {"share": "do-not-share", "do-not-share": "share", "permit": "deny", "deny": "permit"}
    choices = [p for p in paths(document) if p[-1] in ("sharing", "type", "decision") and get(document, p) in flips]
    lists = [p for p in paths(document) if p[-1] in ("people", "provision") and isinstance(get(document, p), list) and get(document, p)]
    if choices and (not lists or draw(st.booleans())):
        path = draw(st.sampled_from(choices))
        return f"contradiction at {path[-1]}", _encode(replaced(document, path, flips[get(document, path)]))
    if not lists:
        return "no provisions to contradict", _encode(document)
    path = draw(st.sampled_from(lists))
    items = get(document, path)
    twin = json.loads(json.dumps(draw(st.sampled_from(items))))
    for key in ("sharing", "type"):
        if isinstance(twin, dict) and twin.get(key) in flips:
            twin[key] = flips[twin[key]]
    return f"contradictory twin in {path[-1]}", _encode(replaced(document, path, [*items, twin]))


@st.composite
def deep_nesting(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    path = draw(st.sampled_from(paths(document)))
    depth = draw(st.integers(100, NESTING))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    text = json.dumps(replaced(document, path, "__casus_corruption_placeholder__"), ensure_ascii=False)
    return f"nested {depth} deep", text.replace(PLACEHOLDER, opener * depth + "1" + closer * depth, 1).encode("utf-8")


@st.composite
def very_large(draw: st.DrawFn, document: Any, limit: int) -> tuple[str, bytes]:
    strings = [p for p in paths(document) if isinstance(get(document, p), str)]
    path = draw(st.sampled_from(strings))
    size = draw(st.sampled_from([limit // 2, limit + 1, limit * 3]))
    return f"{size} bytes at {path[-1]}", _encode(replaced(document, path, "x" * size))


@st.composite
def not_utf8(draw: st.DrawFn, document: Any) -> tuple[str, bytes]:
    raw = _encode(document)
    how = draw(st.sampled_from(["latin-1", "utf-16", "stray bytes"]))
    if how == "latin-1":
        text = json.dumps(
            replaced(document, draw(st.sampled_from([p for p in paths(document) if isinstance(get(document, p), str)])), "Zoë Ñúñez"),
            ensure_ascii=False,
        )
        return "latin-1 body", text.encode("latin-1", errors="replace")
    if how == "utf-16":
        return "utf-16 body", raw.decode("utf-8").encode("utf-16")
    at = draw(st.integers(0, len(raw)))
    return "stray bytes", raw[:at] + draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + raw[at:]


@st.composite
def corrupted(draw: st.DrawFn, shape: str, limit: int) -> Corrupted:
    """A valid form rendered as ``shape`` (form, r4, r5) and then broken one way."""
    form = draw(consent_forms())
    document = RENDERERS[shape](form)
    kind, body = draw(
        st.one_of(
            wrong_type(document),
            missing_element(document),
            unknown_code(document),
            contradictory_provisions(document),
            deep_nesting(document),
            very_large(document, limit),
            not_utf8(document),
        )
    )
    return Corrupted(kind, body, form)
