"""NHS number check digit (Modulus 11), as the NHS Data Dictionary defines it.

A mistyped NHS number would attach a young person's choices to somebody else,
so every number is checked before it reaches a form, a Consent or a query.
"""

from __future__ import annotations

import re
from functools import lru_cache

_TEN_DIGITS = re.compile(r"^[0-9]{10}$")


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no valid number can end them.

    >>> check_digit("943476591")
    9
    """
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=False))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def is_valid(nhs_number: str) -> bool:
    """True for ten digits whose last is the Modulus 11 check digit of the first nine.

    >>> is_valid("9434765919"), is_valid("9434765918"), is_valid("943 476 5919")
    (True, False, False)
    """
    # Length first, so the cache below only ever holds ten-character keys, whatever callers send.
    return isinstance(nhs_number, str) and len(nhs_number) == 10 and _valid_string(nhs_number)


@lru_cache(maxsize=8192)
def _valid_string(nhs_number: str) -> bool:
    # The decision hot path checks the same few thousand numbers over and over, three times per request.
    return bool(_TEN_DIGITS.match(nhs_number)) and check_digit(nhs_number[:9]) == int(nhs_number[9])
