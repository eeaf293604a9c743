"""What the resolvers are configured with: plain data, built by ``gateway.config``.

A connector gets its :class:`BackendSettings`; the graph reads the few gateway-wide settings it
needs through :class:`resolvers.abc.GraphSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

BackendFormat = Literal["square", "shopify", "epcis", "erp"]
BACKEND_FORMATS: tuple[str, ...] = get_args(BackendFormat)


@dataclass(slots=True)
class BackendSettings:
    """How to reach one backend system and how it signs its webhooks."""

    name: str
    format: BackendFormat
    base_url: str
    token: str = ""
    timeout: float = 5.0
    connect_timeout: float = 2.0
    retries: int = 2
    webhook_secret: str = ""
    # Accepted as well during a secret rotation.
    webhook_previous_secret: str = ""
    # Square signs the notification URL; behind a proxy set the public URL here.
    notification_url: str = ""
    # Silent longer than this (seconds) while its API shows changes: poll it (0 = no check).
    heartbeat_seconds: float = 0.0


__all__ = ["BACKEND_FORMATS", "BackendFormat", "BackendSettings"]
