"""What every connector is: one backend's name, the identity map its ids are resolved with,
and one long-lived HTTP client (``resolvers.connectors.http.BackendClient``: retries, typed
errors, traced through the :class:`resolvers.abc.Observer`)."""

from __future__ import annotations

import httpx

from resolvers.abc import NO_OBSERVER, Observer
from resolvers.connectors.http import BackendClient
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


__all__ = ["BackendConnector"]
