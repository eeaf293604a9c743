"""What every vendor's normaliser shares: the delivery, the two refusals, and the checks
every value from a payload passes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ulid import ULID

from gateway.events.envelope import Envelope, EventKind
from resolvers.errors import BadUserInput, OutOfRange
from resolvers.identity import IdentityMap
from resolvers.settings import BackendSettings
from resolvers.types import INT_MAX, bounded


class Malformed(BadUserInput, ValueError):
    """The payload is not what this vendor sends; the message names the problem."""


class Unappliable(BadUserInput, ValueError):
    """A well-formed event that cannot be applied (unmapped identifier, impossible value)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified webhook request."""

    backend: BackendSettings
    body: bytes
    payload: Any
    headers: Mapping[str, str]
    received_at: datetime
    # Settings.max_clock_skew_seconds: how far ahead of received_at a timestamp may be.
    max_skew_seconds: float = 300.0

    @property
    def raw_ref(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def payload_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} must be a JSON object")
    return value


def payload_field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise Malformed(f"{where}.{key} is missing")
    return obj[key]


def payload_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed(f"{where} must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Malformed(f"{where} {value!r} is not an RFC 3339 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def not_future(d: Delivery, moment: datetime, where: str) -> datetime:
    """``moment`` unless it lies more than the clock skew ahead of the delivery's receipt:
    as a version it would outrank every genuine event after it (the cell would be pinned)."""
    ahead = (moment - d.received_at).total_seconds()
    if ahead > d.max_skew_seconds:
        raise Unappliable(f"{where} {moment.isoformat()} lies {ahead:.0f}s in the future "
                          f"(more than max_clock_skew_seconds = {d.max_skew_seconds:g})")
    return moment


def signed_time(d: Delivery, value: Any, where: str) -> datetime:
    return not_future(d, payload_time(value, where), where)


def payload_quantity(value: int, where: str, low: int = 0) -> int:
    """A quantity from a payload: within GraphQL's Int (and ``low``), else dead-lettered."""
    try:
        return bounded(value, where, low, INT_MAX)
    except OutOfRange as exc:
        raise Unappliable(str(exc)) from exc


def out_of_range(exc: Exception) -> Unappliable:
    """A connector's :class:`ValueOutOfRange` (``"<backend>: <message>"``) as a dead letter."""
    return Unappliable(str(exc).split(": ", 1)[-1])


def make_envelope(d: Delivery, *, kind: EventKind, topic: str, source_event_id: str,
              delivery_id: str, occurred_at: datetime, version: int, **rest: Any) -> Envelope:
    return Envelope(id=str(ULID()), kind=kind, source=d.backend.name, system=d.backend.format,
                    topic=topic, source_event_id=source_event_id, delivery_id=delivery_id,
                    occurred_at=occurred_at, received_at=d.received_at, source_version=version,
                    raw_ref=d.raw_ref, **rest)


def unmapped_ids(identity: IdentityMap, seen_in: str) -> str:
    found = [f"{u.namespace} {u.kind} {u.value}" for u in identity.unmapped.values()
             if u.seen_in == seen_in]
    return ", ".join(found[-3:]) or "unknown identifier"


Normalizer = Callable[[Delivery, IdentityMap], tuple[str, list[Envelope]]]
