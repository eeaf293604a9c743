"""What every resolver gets: ``info.context`` is a :class:`resolvers.loaders.RequestContext`."""

from __future__ import annotations

from strawberry.types import Info

from resolvers.loaders import RequestContext

Ctx = Info[RequestContext, None]

__all__ = ["Ctx"]
