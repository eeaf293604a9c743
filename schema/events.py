"""Subscription events executed once per group of subscribers, not once per subscriber.

A stock change watched by many subscribers used to run GraphQL execution (the payload's
selection set, with the change as root value) once for each of them. Subscribers that asked
for the same thing see the same payload: the same selection (document), the same values of
the variables that shape the result, and the same visibility (the principal's scopes and
locations). The variables that only *choose* which changes arrive - the filter arguments of
the root field (``stockChanged(skus:, locationIds:, after:)``) - do not shape a payload, so
subscribers watching different SKUs with one document are one group.

:class:`SharedEvents` is the executor class the schema runs with (graphql-core's
``Executor``, through Strawberry's ``execution_context_class``). For an event of a grouped
field it computes the payload once per (group, event) and hands every member the same
``ExecutionResult``; the transport then serialises that result's ``data`` once
(gateway/http/websocket.py). Only error-free results are shared: one with errors is
executed by each subscriber on its own, as before. Everything per subscriber stays per
subscriber: its filter, cursor, buffer and conflation (gateway/events/changes.py), its
quota, its socket's expiry and limits.

A grouped field's events must be one object per change for all subscribers (schema/
subscription.py builds each ``StockChange`` once per change, through ``ChangeFeed.shared``,
which also holds the shared results, per change).
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import Any

import orjson
from graphql import (
    ExecutionResult,
    FieldNode,
    OperationType,
    Visitor,
    print_ast,
    visit,
)
from graphql.language import Node, VariableNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# Root subscription fields whose events are shared, and their arguments that only filter.
GROUPED: dict[str, frozenset[str]] = {
    "stockChanged": frozenset({"skus", "locationIds", "after"}),
}


MAX_GROUPS = 4096
_GROUPS: dict[Hashable, Hashable] = {}


class _Variables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_args: Any) -> None:
        self.names.add(node.name.value)


def _variables(nodes: list[Node]) -> set[str]:
    found = _Variables()
    for node in nodes:
        visit(node, found)
    return found.names


def group_of(executor: Any) -> Hashable | None:
    """What an operation's subscribers share a payload by, or None if its events are not
    shared (not a subscription, not one grouped field, no principal)."""
    operation = executor.operation
    if operation.operation is not OperationType.SUBSCRIPTION:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    root = selections[0]
    filters = GROUPED.get(root.name.value)
    principal = getattr(executor.context_value, "principal", None)
    if filters is None or principal is None or root.directives:
        return None
    shaping = [a for a in root.arguments or () if a.name.value not in filters]
    fragments = [executor.fragment_definitions[name]
                 for name in sorted(executor.fragment_definitions)]
    parts: list[Node] = [*shaping, *fragments]
    if root.selection_set is not None:
        parts.append(root.selection_set)
    coerced = executor.variable_values.coerced
    try:
        variables = orjson.dumps({name: coerced.get(name) for name in _variables(parts)},
                                 option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a value orjson cannot write: no group
        return None
    group = (root.alias.value if root.alias else "", root.name.value,
             tuple(print_ast(node) for node in parts), variables,
             principal.scopes, principal.locations)
    # Every member holds the group's one key (a few KB of printed selection otherwise per
    # subscription); the table forgets the oldest groups past its size.
    found = _GROUPS.get(group)
    if found is None:
        found = _GROUPS[group] = group
        while len(_GROUPS) > MAX_GROUPS:
            del _GROUPS[next(iter(_GROUPS))]
    return found


class SharedEvents(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, executing a grouped subscription's event once per group."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group_of(self)

    def execute_operation(self, serially: bool | None = None) -> Any:
        feed = getattr(self.context_value, "feed", None)
        event = self.root_value
        if self.group is None or feed is None or not hasattr(event, "cursor"):
            return super().execute_operation(serially)
        return self._shared(feed, event, serially)

    async def _shared(self, feed: Any, event: Any, serially: bool | None) -> Any:
        errors = getattr(self.context_value, "errors", [])
        before = len(errors)
        computed = False

        async def once() -> tuple[Any, bool]:
            nonlocal computed
            computed = True
            result = super(SharedEvents, self).execute_operation(serially)
            if isinstance(result, Awaitable):
                result = await result
            # Only a result without errors is everyone's (an error may be this caller's).
            if not (isinstance(result, ExecutionResult) and not result.errors
                    and len(errors) == before and isinstance(result.data, dict)):
                return result, False
            result.data = SharedData(result.data)
            return result, True

        # Keyed by the event object: one per change and conflated flag (see the module).
        result, shareable = await feed.shared(event, ("event", id(event), self.group), once)
        if not shareable and not computed:
            own = super().execute_operation(serially)
            return await own if isinstance(own, Awaitable) else own
        return result


class SharedData(dict[str, Any]):
    """A shared result's ``data``: the same for every subscriber of its group, so its JSON
    is written once (:meth:`encoded`) and spliced into each transport's message."""

    __slots__ = ("_encoded",)

    def encoded(self) -> orjson.Fragment:
        try:
            return self._encoded
        except AttributeError:
            self._encoded: orjson.Fragment = orjson.Fragment(orjson.dumps(self))
            return self._encoded


def encode(message: object) -> bytes:
    """A transport's message as JSON (WebSocket ``next``/``data``, an SSE event's or a
    multipart part's body), with a shared result's ``data`` written once for all."""
    if isinstance(message, dict):
        data = message.get("data")
        if isinstance(data, SharedData):
            return orjson.dumps({**message, "data": data.encoded()})
        payload = message.get("payload")
        if isinstance(payload, dict) and isinstance(payload.get("data"), SharedData):
            return orjson.dumps({**message, "payload": {**payload,
                                                        "data": payload["data"].encoded()}})
    return orjson.dumps(message)


__all__ = ["GROUPED", "SharedData", "SharedEvents", "encode", "group_of"]
