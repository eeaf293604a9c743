"""The GraphQL contract: the unified retail model as a Strawberry schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import strawberry
from graphql import GraphQLObjectType, GraphQLSchema, print_schema, specified_directives
from strawberry.extensions import SchemaExtension

from schema.events import SharedEvents
from schema.query import Query
from schema.reservations import Mutation
from schema.subscription import Subscription


def build_schema(extensions: Sequence[type[SchemaExtension] | Any] = ()) -> strawberry.Schema:
    """The schema as served: an Apollo Federation v2 subgraph (``_service``, ``_entities``;
    Product keyed by ``sku``, Location by ``id``, StockLevel by ``sku location { id }``)."""
    return strawberry.federation.Schema(query=Query, mutation=Mutation,
                                        subscription=Subscription,
                                        extensions=list(extensions),
                                        # A grouped subscription's event: once per group.
                                        execution_context_class=SharedEvents)


schema = build_schema()

FEDERATION_FIELDS = frozenset({"_service", "_entities"})


def _is_federation_type(name: str) -> bool:
    """_Any, _Entity, _Service, _FieldSet, link__Import, link__Purpose, federation__*."""
    return name.startswith("_") or "__" in name


def sdl() -> str:
    """The schema in SDL as clients see it, checked in at ``schema.graphql``: without the
    federation plumbing (``_service``, ``_entities``, ``@link``, ``@key``), which
    :func:`federation_sdl` has. Printed like ``schema.as_str()``: types by name."""
    served = schema._schema
    assert served.query_type is not None
    query = GraphQLObjectType(
        served.query_type.name, description=served.query_type.description,
        fields={name: f for name, f in served.query_type.fields.items()
                if name not in FEDERATION_FIELDS})
    types = sorted([query, *(t for name, t in served.type_map.items()
                             if not _is_federation_type(name) and name != query.name)],
                   key=lambda t: t.name)
    client = GraphQLSchema(query=query, mutation=served.mutation_type,
                           subscription=served.subscription_type, types=types,
                           directives=specified_directives)
    return print_schema(client) + "\n"


def federation_sdl() -> str:
    """The subgraph SDL a supergraph composes, as served at ``{ _service { sdl } }``."""
    return schema.as_str() + "\n"


__all__ = ["build_schema", "federation_sdl", "schema", "sdl"]
