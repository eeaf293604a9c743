"""Who may see what, as data: scopes, the :class:`Principal` and its locations.

The data model of access, used by every layer: the loaders filter by a principal's locations
(``resolvers.graph``), schema fields check its scopes (``schema.permissions``), and the gateway
turns credentials into one (``gateway.http.auth``: API keys and JWTs). Scopes (``admin`` implies
all of them):

- ``stock:read``: stock levels, availability, purchase orders, stock history and subscriptions;
- ``stock:reserve``: reservations (``reserveStock``, ``releaseReservation``,
  ``commitReservation``, ``Query.reservations``), at the caller's locations only;
- ``discrepancies:read``: discrepancy fields;
- ``metrics:read``: ``GET /metrics``;
- ``sync:read``: the sync audit trail (``syncActions``, ``syncActionCompleted``) and push
  health (``syncStatus.push``);
- ``sync:write``: ``syncNow``;
- ``admin``: everything, including ``unmappedIdentifiers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from resolvers.errors import RetailgraphError

STOCK_READ = "stock:read"
STOCK_RESERVE = "stock:reserve"
DISCREPANCIES_READ = "discrepancies:read"
METRICS_READ = "metrics:read"
SYNC_READ = "sync:read"
SYNC_WRITE = "sync:write"
ADMIN = "admin"
SCOPES = (STOCK_READ, STOCK_RESERVE, DISCREPANCIES_READ, METRICS_READ, SYNC_READ, SYNC_WRITE,
          ADMIN)


class Forbidden(RetailgraphError):
    """Authenticated, but not allowed to read this (a GraphQL error, code FORBIDDEN)."""

    code = "FORBIDDEN"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: what it may read and where."""

    subject: str
    scopes: frozenset[str]
    locations: frozenset[str] | None = None  # None: every location
    kind: str = "open"  # "open" (auth off) | "api_key" | "jwt" | "none"
    expires_at: float | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes

    def sees(self, location_id: str) -> bool:
        return self.locations is None or location_id in self.locations

    def visible(self, location_ids: Iterable[str]) -> list[str]:
        """Those of ``location_ids`` this principal may read, in order."""
        if self.locations is None:
            return list(location_ids)
        return [x for x in location_ids if x in self.locations]

    def restrict(self, wanted: Sequence[str] | None) -> list[str] | None:
        """The locations a request for ``wanted`` (None: all) may read; None means all.

        Asking explicitly for a location outside the grant is :class:`Forbidden`.
        """
        if self.locations is None:
            return None if wanted is None else list(wanted)
        if wanted is None:
            return sorted(self.locations)
        denied = [x for x in wanted if x not in self.locations]
        if denied:
            raise Forbidden(f"not allowed to read location(s) {', '.join(map(str, denied))}")
        return list(wanted)

    def require_location(self, location_id: str) -> None:
        if not self.sees(location_id):
            raise Forbidden(f"not allowed to read location {location_id}")

    @property
    def client_id(self) -> str:
        """Stable id of the caller for rate limiting; empty when not authenticated."""
        return f"{self.kind}:{self.subject}" if self.kind in ("api_key", "jwt") else ""

    def client_key(self, peer: object) -> str:
        """Who a request or subscription counts against (rate limit, subscription limit): the
        authenticated caller, else its address (``peer``: ``scope["client"]``)."""
        if self.client_id:
            return self.client_id
        host = peer[0] if isinstance(peer, tuple | list) and peer else "unknown"
        return f"ip:{host}"

    def cache_scope(self) -> str:
        """What the response cache keys on: two callers with equal scope share responses."""
        if self.kind == "open":
            return "public"
        locations = "*" if self.locations is None else ",".join(sorted(self.locations))
        return f"scopes={','.join(sorted(self.scopes))};locations={locations}"


OPEN = Principal("anonymous", frozenset({ADMIN}))
NOBODY = Principal("unauthenticated", frozenset(), frozenset(), kind="none")


__all__ = ["ADMIN", "DISCREPANCIES_READ", "METRICS_READ", "NOBODY", "OPEN", "SCOPES", "STOCK_READ",
           "STOCK_RESERVE", "Forbidden", "Principal"]
