"""The GraphQL contract: the unified retail model as a Strawberry schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import strawberry
from strawberry.extensions import SchemaExtension

from schema.query import Query
from schema.subscription import Subscription


def build_schema(extensions: Sequence[type[SchemaExtension] | Any] = ()) -> strawberry.Schema:
    return strawberry.Schema(query=Query, subscription=Subscription,
                             extensions=list(extensions))


schema = build_schema()


def sdl() -> str:
    """The schema in SDL, as checked in at ``schema.graphql``."""
    return schema.as_str() + "\n"


__all__ = ["build_schema", "schema", "sdl"]
