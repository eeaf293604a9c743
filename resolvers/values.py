"""Vendors' scalar values, checked strictly before anything converts them; source versions.

``Decimal`` accepts far more than any vendor sends: exponents (``"1e100000"``, whose
``int()`` took seconds of CPU on the event loop, and ``"1e30"``, an integer no store can
hold), ``NaN``, ``Infinity``, signalling NaNs (which raise on comparison), surrounding
whitespace, underscores and non-ASCII digits. A decimal from a vendor is a plain decimal
string or it is refused, with the field named, before it is converted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
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




# -- source versions -------------------------------------------------------------------------

def is_sequence(version: str) -> bool:
    """Whether a source version is a sequence number (else it is a timestamp)."""
    return version.isdigit()


def version_number(version: str, as_of: datetime) -> int:
    """A source version as an integer that orders like the source does.

    Sequence numbers are used as they are; timestamps become epoch microseconds.
    """
    if is_sequence(version):
        return int(version)
    if version:
        try:
            return epoch_micros(datetime.fromisoformat(version.replace("Z", "+00:00")))
        except ValueError:
            pass
    return epoch_micros(as_of)


def epoch_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


__all__ = ["MAX_PLACES", "epoch_micros", "is_sequence", "plain_decimal", "shown", "version_number"]
