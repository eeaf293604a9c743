"""What every connector is: one backend's name, the identity map its ids are resolved with,
and one long-lived HTTP client (``resolvers.connectors.http.BackendClient``: retries, typed
errors, traced through the :class:`resolvers.abc.Observer`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.connectors.http import BackendClient
from resolvers.errors import BackendProtocolError
from resolvers.identity import IdentityMap
from resolvers.settings import BackendSettings


class BackendConnector:
    """The shared base of the four connectors (:class:`resolvers.abc.Connector`)."""

    def __init__(self, settings: BackendSettings, identity: IdentityMap,
                 transport: httpx.AsyncBaseTransport | None = None,
                 observer: Observer = NO_OBSERVER) -> None:
        self.name = settings.name
        self.identity = identity
        self.client = BackendClient(settings, transport, observer)

    async def aclose(self) -> None:
        await self.client.aclose()


def backend_time(source: str, value: Any, what: str) -> datetime:
    """A backend's RFC 3339 timestamp (with an offset) in UTC; anything else is the backend's
    :class:`BackendProtocolError` naming the field."""
    if not isinstance(value, str):
        raise BackendProtocolError(source, f"{what} {value!r} is not an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BackendProtocolError(source, f"{what} {value!r} is not RFC 3339") from exc
    if moment.tzinfo is None:
        raise BackendProtocolError(source, f"{what} {value!r} has no UTC offset")
    return moment.astimezone(UTC)


__all__ = ["BackendConnector", "backend_time"]
