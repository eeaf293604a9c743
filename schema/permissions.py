"""Scopes on GraphQL fields: ``@strawberry.field(extensions=[requires(STOCK_READ)])``.

A field the caller may not read gives an error with ``extensions.code = "FORBIDDEN"`` and the
rest of the response intact (list fields come back empty, nullable fields null). The caller is
``info.context.principal`` (a :class:`resolvers.access.Principal`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError
from strawberry.extensions import FieldExtension, SchemaExtension
from strawberry.types.base import StrawberryList

from resolvers.access import Forbidden

if TYPE_CHECKING:
    from strawberry.extensions.field_extension import (
        AsyncExtensionResolver,
        SyncExtensionResolver,
    )
    from strawberry.types import Info
    from strawberry.types.field import StrawberryField


class Requires(FieldExtension):
    """Field extension: the caller needs ``scope``. Denied list fields resolve to ``[]`` and
    nullable ones to null, each with a FORBIDDEN error; the rest of the response stays."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.returns_list = False

    def apply(self, field: StrawberryField) -> None:
        # A nullable field becomes null (the error says why); a non-null list becomes [].
        self.returns_list = isinstance(field.type, StrawberryList)

    def _deny(self, info: Info[Any, Any]) -> list[Any]:
        raw = info._raw_info
        message = f"the {self.scope} scope is required for {raw.parent_type.name}." \
                  f"{info.field_name}"
        if not self.returns_list:
            raise Forbidden(message)
        info.context.errors.append(GraphQLError(
            message, nodes=raw.field_nodes, path=info.path.as_list(),
            extensions=Forbidden(message).extensions()))
        return []

    def resolve(self, next_: SyncExtensionResolver, source: Any, info: Info[Any, Any],
                **kwargs: Any) -> Any:
        if not info.context.principal.has(self.scope):
            return self._deny(info)
        return next_(source, info, **kwargs)

    async def resolve_async(self, next_: AsyncExtensionResolver, source: Any,
                            info: Info[Any, Any], **kwargs: Any) -> Any:
        if not info.context.principal.has(self.scope):
            return self._deny(info)
        result = next_(source, info, **kwargs)
        if inspect.isasyncgen(result):
            return result
        return await result


def requires(scope: str) -> Requires:
    """``@strawberry.field(extensions=[requires(STOCK_READ)])``."""
    return Requires(scope)


class ForbiddenErrors(SchemaExtension):
    """Adds the FORBIDDEN errors of list fields that resolved to ``[]`` to the result."""

    def on_operation(self) -> Iterator[None]:
        yield
        context = self.execution_context.context
        extra = getattr(context, "errors", None)
        result = self.execution_context.result
        if extra and result is not None and hasattr(result, "errors"):
            result.errors = [*(result.errors or []), *extra]


__all__ = ["ForbiddenErrors", "Requires", "requires"]
