"""The data the adapter reads at run time, found through ``importlib.resources`` so an installed wheel works anywhere.

The repository publishes the profiles in the top-level ``profiles/`` folder and the OpenAPI document in
``docs/``; the package reaches them through two links (``fhir_adapter/profiles`` and
``fhir_adapter/openapi.json``), which the wheel build resolves into package data.  One copy is committed, and
nothing depends on the current directory or on sitting beside a checkout.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path


def _package_root() -> Traversable:
    return files(__package__ or "fhir_adapter")


def profiles_dir() -> Path:
    """The profiles folder as a real directory (the validator globs it and the artefact generator writes to it).

    A wheel installed as files (pip, pipx) always gives one; a zipped import would not, and says so.
    """
    root = _package_root() / "profiles"
    if not isinstance(root, Path):
        raise RuntimeError("fhir_adapter must be installed as files on disk to read its profiles")
    return root


def openapi_text() -> str:
    """The facade's OpenAPI document as published in ``docs/openapi.json``."""
    return (_package_root() / "openapi.json").read_text(encoding="utf-8")
