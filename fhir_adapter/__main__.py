"""`python -m fhir_adapter` runs the CLI (the same as the `fhir-adapter` console script)."""

from .cli import main

main()
