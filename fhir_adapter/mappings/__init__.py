"""CASUS form <-> FHIR Consent mappings.

``MAPPING_VERSION`` names the shape the writers produce.  The sync job records it for every Consent it pushes
and rewrites, once, each Consent on the server that an older mapping wrote.  Version 1 put the default on the R4
root provision and nested per-type permits; version 2 is the shape a spec-only reader reads as CASUS means it.
"""

MAPPING_VERSION = 2
