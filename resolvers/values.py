"""Vendors' scalar values, checked strictly before anything converts them.

``Decimal`` accepts far more than any vendor sends: exponents (``"1e100000"``, whose
``int()`` took seconds of CPU on the event loop, and ``"1e30"``, an integer no store can
hold), ``NaN``, ``Infinity``, signalling NaNs (which raise on comparison), surrounding
whitespace, underscores and non-ASCII digits. A decimal from a vendor is a plain decimal
string or it is refused, with the field named, before it is converted.
"""

from __future__ import annotations

import re
from decimal import Decimal

# An optional minus, up to 20 digits (more than 2^64), an optional fraction.
_PLAIN_DECIMAL = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]+)?")
# Decimals kept past the point at most (Square quantities have up to 5).
MAX_PLACES = 12


def plain_decimal(value: object, places: int = MAX_PLACES) -> Decimal | None:
    """``value`` as a Decimal if it is a plain decimal string with at most ``places``
    decimals, else None."""
    if not isinstance(value, str) or len(value) > 22 + places \
            or _PLAIN_DECIMAL.fullmatch(value) is None:
        return None
    if len(value.partition(".")[2]) > places:
        return None
    return Decimal(value)


def shown(value: object) -> str:
    """``value`` for an error message: its repr, cut short."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["MAX_PLACES", "plain_decimal", "shown"]
