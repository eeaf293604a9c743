"""Limits on hostile queries (depth, aliases, tokens, page size and query cost) and on how
deeply any JSON body may nest (:func:`loads`).

Every rejection is a GraphQL error with ``extensions.code = "LIMIT_EXCEEDED"`` and
``extensions.limit`` naming the setting that was hit (``max_depth``, ``max_aliases``,
``max_tokens``, ``max_page_size``, ``max_cost``) and ``extensions.max`` its value.

Every check costs time linear in the document's size: a fragment is measured once, however
often it is spread (see :class:`_Shape` and :class:`_Walk`). The validation rules are built
once per schema (:func:`limit_extensions`), so Strawberry's validation cache keeps hitting; a
rule class built per request would defeat it. The cost and
page-size checks need the request's variables, which validation rules never see, so they run
as a schema extension just before execution, outside the validation cache.

Cost: each field weighs 1 if it returns an object (0 for a scalar), plus the weight of every
backend it reads (:data:`ROLE_WEIGHTS`: the ERP is the slowest), and lists multiply what is
below them by their size: ``first`` for pages, the number of locations the caller can see for
per-location lists, :data:`DEFAULT_LIST_SIZE` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLID,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    Node,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
    get_named_type,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, SchemaExtension

from gateway.config import Settings

LIMIT_CODE = "LIMIT_EXCEEDED"

# Relative cost of a read from each kind of backend (by format): slower systems weigh more.
ROLE_WEIGHTS: dict[str, int] = {"erp": 5, "square": 3, "epcis": 3, "shopify": 2}
# Which backends a field reads (beyond the in-memory catalog and the Redis cache in front).
FIELD_ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("Query", "product"): ("erp",),
    ("Query", "products"): ("erp",),
    ("Query", "stockLevel"): ("square", "epcis", "erp"),
    # Relay: a global id may name a product (ERP) or a stock level (its system of record).
    ("Query", "node"): ("square", "epcis", "erp"),
    ("Query", "nodes"): ("square", "epcis", "erp"),
    ("Product", "stock"): ("square", "epcis", "erp"),
    ("Product", "availability"): ("square", "epcis", "erp"),
    ("Product", "purchaseOrders"): ("erp",),
    ("Subscription", "availabilityChanged"): ("square", "epcis", "erp"),
}
# Lists with one entry per location the caller may see.
LOCATION_LISTS = frozenset({("Product", "stock"), ("Query", "locations"),
                            ("Availability", "byLocation")})
DEFAULT_LIST_SIZE = 10
_SUGGESTION = re.compile(r"\s*Did you mean .*\?$")
_TOKENS_MESSAGE = "tokens. Parsing aborted"
_PAGE_MESSAGE = re.compile(r"^first must be between 1 and (\d+)")
# Longer identifiers are no system's (Shopify's SKUs, the longest, have 255 characters).
MAX_ID_LENGTH = 255
# Larger counts and costs are reported as "more than" this (JavaScript's largest safe integer;
# orjson cannot encode integers past 64 bits at all).
MAX_REPORTED = 2**53 - 1


# -- JSON nesting -----------------------------------------------------------------------------

# How deeply a JSON body (webhook payloads, GraphQL requests and their variables, WebSocket
# messages) may nest arrays and objects. orjson parses up to 1024 levels, but encodes only
# 255 (re-encoding a persisted query's variables failed: a 500), and repr() and other walks
# recurse: str() of a 1000-deep list in an ERP payload was a RecursionError.
MAX_JSON_DEPTH = 64


class NestedTooDeep(orjson.JSONDecodeError):
    """A JSON body nesting deeper than :data:`MAX_JSON_DEPTH`: malformed JSON, as far as
    whoever catches JSONDecodeError is concerned."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than {limit} levels", "", 0)

    def __str__(self) -> str:
        return str(self.msg)


def loads(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``orjson.loads``, refusing (:class:`NestedTooDeep`) a value nested deeper than
    ``limit`` levels, before anything recursive touches it."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc.msg).startswith("depth limit exceeded"):  # orjson's own, at 1024
            raise NestedTooDeep(limit) from exc
        raise
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") > limit and _deeper_than(value, limit):
        raise NestedTooDeep(limit)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


# -- GraphQL limits -----------------------------------------------------------------------------

class LimitExceeded(GraphQLError):
    """A query over one of the configured limits."""

    def __init__(self, message: str, limit: str, maximum: int,
                 nodes: list[Node] | None = None, **extra: Any) -> None:
        super().__init__(message, nodes, extensions={"code": LIMIT_CODE, "limit": limit,
                                                     "max": maximum, **extra})


class _Shape:
    """Depth and alias count of a document's selections, each fragment summarised once.

    Strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` expand a fragment again at
    every spread, so a chain of fragments each spreading the next twice costs 2^n: twenty
    levels (about 170 tokens) held the event loop for seconds. Here a fragment's depth and
    aliases are computed the first time it is spread and reused, so the cost is linear in the
    document's size. A spread of a fragment that is being summarised (a cycle, which
    ``NoFragmentCyclesRule`` reports) or that does not exist adds nothing.

    The measures are Strawberry's: depth counts the fields a selection is nested in
    (introspection fields and what is below them excepted), aliases are counted at each
    place a fragment is spread.
    """

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {d.name.value: d for d in document.definitions
                          if isinstance(d, FragmentDefinitionNode)}
        self.done: dict[str, tuple[int, int]] = {}
        self.busy: set[str] = set()

    def measure(self, selection_set: SelectionSetNode) -> tuple[int, int]:
        """(depth, aliases) of ``selection_set``. It recurses only as deep as the document
        nests: :class:`DocumentLimits` measures when leaving the document, and graphql-core
        has by then aborted the validation of documents nested past its limit."""
        depth = aliases = 0
        for selection in selection_set.selections:
            inner: tuple[int, int] = (0, 0)
            if isinstance(selection, FieldNode):
                aliases += selection.alias is not None
                if selection.selection_set is not None:
                    inner = self.measure(selection.selection_set)
                    if not selection.name.value.startswith("__"):
                        inner = (1 + inner[0], inner[1])
                    else:  # introspection: not counted, nor what is below it
                        inner = (0, inner[1])
            elif isinstance(selection, InlineFragmentNode):
                inner = self.measure(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                inner = self.fragment(selection.name.value)
            depth, aliases = max(depth, inner[0]), aliases + inner[1]
        return depth, aliases

    def fragment(self, name: str) -> tuple[int, int]:
        found = self.done.get(name)
        if found is not None:
            return found
        definition = self.fragments.get(name)
        if definition is None or name in self.busy:
            return 0, 0
        self.busy.add(name)
        found = self.done[name] = self.measure(definition.selection_set)
        self.busy.discard(name)
        return found


def _document_limits(max_depth: int, max_aliases: int) -> type[ASTValidationRule]:
    """A validation rule enforcing ``max_depth`` (per operation) and ``max_aliases`` (over
    the document) in time linear in the document's size."""

    class DocumentLimits(ASTValidationRule):
        def leave_document(self, node: DocumentNode, *_args: Any) -> None:
            shape = _Shape(node)
            aliases = 0
            for definition in node.definitions:
                if not isinstance(definition, OperationDefinitionNode):
                    continue
                depth, count = shape.measure(definition.selection_set)
                aliases += count
                if depth > max_depth:
                    name = definition.name.value if definition.name else "anonymous"
                    self.report_error(LimitExceeded(
                        f"Query is too deep: '{name}' exceeds maximum operation depth of "
                        f"{max_depth} (it nests fields {depth} levels deep; limit max_depth)",
                        "max_depth", max_depth, nodes=[definition]))
            if aliases > max_aliases:
                self.report_error(LimitExceeded(
                    f"Too many aliases: {_count(aliases)} aliases found. Allowed: "
                    f"{max_aliases} (limit max_aliases)", "max_aliases", max_aliases))

    return DocumentLimits


def _count(value: int) -> str:
    """A count for a message: spreads multiply, so it can have hundreds of digits."""
    return str(value) if value <= MAX_REPORTED else f"more than {MAX_REPORTED}"


def validation_rules(settings: Settings) -> list[type[ASTValidationRule]]:
    """The depth and alias limits (and no introspection, if so configured), built once."""
    rules = [_document_limits(settings.max_depth, settings.max_aliases)]
    if not settings.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    return rules


# -- cost -------------------------------------------------------------------------------------

def _int_arg(node: FieldNode, name: str, variables: Mapping[str, Any],
             defaults: Mapping[str, Any]) -> int | None:
    for arg in node.arguments or ():
        if arg.name.value != name:
            continue
        value = arg.value
        if isinstance(value, IntValueNode):
            return int(value.value)
        if isinstance(value, VariableNode):
            raw = variables.get(value.name.value, defaults.get(value.name.value))
            return raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        return None
    return None


def _list_len(node: FieldNode, name: str, variables: Mapping[str, Any]) -> int | None:
    for arg in node.arguments or ():
        if arg.name.value != name:
            continue
        value = arg.value
        if isinstance(value, ListValueNode):
            return len(value.values)
        if isinstance(value, VariableNode):
            raw = variables.get(value.name.value)
            return len(raw) if isinstance(raw, list) else None
    return None


def _strings(value: ValueNode, variables: Mapping[str, Any],
             defaults: Mapping[str, Any]) -> Iterator[str]:
    """The strings in an argument's value: literal, or from its variable (lists and the
    top level of objects looked into)."""
    raw: Any
    if isinstance(value, VariableNode):
        raw = variables.get(value.name.value, defaults.get(value.name.value))
    elif isinstance(value, StringValueNode):
        raw = value.value
    elif isinstance(value, ListValueNode):
        for item in value.values:
            yield from _strings(item, variables, defaults)
        return
    else:
        return
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            yield from (v for v in item.values() if isinstance(v, str))


class CostModel:
    """Computes a query's cost and checks page sizes; one per schema."""

    def __init__(self, max_cost: int, max_page_size: int) -> None:
        self.max_cost = max_cost
        self.max_page_size = max_page_size

    def cost(self, schema: GraphQLSchema, document: DocumentNode, operation_name: str | None,
             variables: Mapping[str, Any], locations: int) -> int:
        """The cost of the operation that would run."""
        operation: OperationDefinitionNode | None = None
        fragments: dict[str, FragmentDefinitionNode] = {}
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                fragments[definition.name.value] = definition
            elif isinstance(definition, OperationDefinitionNode) and (
                    operation_name is None or (definition.name is not None
                                               and definition.name.value == operation_name)):
                operation = operation or definition
        if operation is None:
            return 0
        root = {OperationType.QUERY: schema.query_type,
                OperationType.MUTATION: schema.mutation_type,
                OperationType.SUBSCRIPTION: schema.subscription_type}[operation.operation]
        if root is None:
            return 0
        defaults = {}
        for variable in operation.variable_definitions or ():
            if isinstance(variable.default_value, IntValueNode):
                defaults[variable.variable.name.value] = int(variable.default_value.value)
        walk = _Walk(schema, fragments, variables, defaults, locations, self.max_page_size)
        return walk.selections(root, operation.selection_set, paged=False)


Composite = GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType


class _Walk:
    """One operation's cost. A fragment's cost depends only on the type it is spread on and
    on whether it is inside a page, so it is computed once per (fragment, type, paged) and
    reused at every other spread: linear in the document's size (re-expanding fragments at
    each spread costs 2^n for a chain of fragments each spreading the next twice). A spread
    of a fragment being computed (a cycle; validation refuses those) adds nothing."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode],
                 variables: Mapping[str, Any], defaults: Mapping[str, Any], locations: int,
                 max_page_size: int) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.defaults = defaults
        self.locations = locations
        self.max_page_size = max_page_size
        self.done: dict[tuple[str, str, bool], int] = {}
        self.busy: set[tuple[str, str, bool]] = set()

    def selections(self, parent: Composite, selection_set: SelectionSetNode | None,
                   paged: bool) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += self.field(parent, selection, paged)
            elif isinstance(selection, InlineFragmentNode):
                total += self.selections(self._narrow(parent, selection.type_condition),
                                         selection.selection_set, paged)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(parent, selection.name.value, paged)
        return total

    def fragment(self, parent: Composite, name: str, paged: bool) -> int:
        key = (name, parent.name, paged)
        found = self.done.get(key)
        if found is not None:
            return found
        fragment = self.fragments.get(name)
        if fragment is None or key in self.busy:
            return 0
        self.busy.add(key)
        found = self.done[key] = self.selections(
            self._narrow(parent, fragment.type_condition), fragment.selection_set, paged)
        self.busy.discard(key)
        return found

    def _check_ids(self, definition: GraphQLField, node: FieldNode) -> None:
        """Identifiers (ID arguments, and the keys of federation representations) longer
        than :data:`MAX_ID_LENGTH`: BAD_USER_INPUT before any backend sees them."""
        for arg in node.arguments or ():
            declared = definition.args.get(arg.name.value)
            if declared is None:
                continue
            kind = get_named_type(declared.type)
            if kind is GraphQLID or kind.name == "_Any":
                for text in _strings(arg.value, self.variables, self.defaults):
                    if len(text) > MAX_ID_LENGTH:
                        raise GraphQLError(
                            f"{arg.name.value} is longer than {MAX_ID_LENGTH} characters: "
                            "no such identifier", extensions={"code": "BAD_USER_INPUT"})

    def _narrow(self, parent: Composite, condition: Any) -> Composite:
        if condition is None:
            return parent
        found = self.schema.get_type(condition.name.value)
        return found if isinstance(found, GraphQLObjectType) else parent

    def field(self, parent: Composite, node: FieldNode, paged: bool) -> int:
        name = node.name.value
        if name.startswith("__"):
            return 1 if name != "__typename" else 0
        if isinstance(parent, GraphQLUnionType):  # only __typename is selectable on a union
            return 0
        definition = parent.fields.get(name)
        if definition is None:
            return 0
        self._check_ids(definition, node)
        key = (parent.name, name)
        named = get_named_type(definition.type)
        composite = isinstance(named, GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType)
        weight = (1 if composite else 0) + sum(
            ROLE_WEIGHTS[r] for r in FIELD_ROLES.get(key, ()))
        first: int | None = None
        if "first" in definition.args:
            first = _int_arg(node, "first", self.variables, self.defaults)
            if first is None:
                default = definition.args["first"].default_value
                first = default if isinstance(default, int) else self.max_page_size
            # Larger pages are refused by the field itself (BAD_USER_INPUT, limit max_page_size).
            first = min(first, self.max_page_size)
        wrapped = definition.type
        if isinstance(wrapped, GraphQLNonNull):
            wrapped = wrapped.of_type
        if first is not None:
            size = max(first, 1)
        elif isinstance(wrapped, GraphQLList):
            if paged:
                size = 1  # edges/nodes/changes of a page: the page's `first` counted already
            elif key in LOCATION_LISTS:
                size = _list_len(node, "locationIds", self.variables) or self.locations
            elif key == ("Query", "_entities"):  # federation: one item per representation
                size = _list_len(node, "representations", self.variables) or DEFAULT_LIST_SIZE
            elif key == ("Query", "nodes"):  # Relay: one item per global id
                size = _list_len(node, "ids", self.variables) or DEFAULT_LIST_SIZE
            else:
                size = DEFAULT_LIST_SIZE
        else:
            size = 1
        if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType):
            return weight * size
        # On a union (federation's _Entity) or interface, each fragment counts, narrowed to
        # its type: an upper bound.
        inner = self.selections(named, node.selection_set, paged=first is not None)
        if first is None and not isinstance(wrapped, GraphQLList):
            return weight + inner
        return weight + size * (inner + 1)  # each item counts, and what is selected in it


class QueryCost(SchemaExtension):
    """Rejects, before execution, operations over ``max_cost``."""

    def __init__(self, model: CostModel) -> None:
        self.model = model

    def on_execute(self) -> Iterator[None]:
        ec = self.execution_context
        if ec.graphql_document is not None:
            cost = self.model.cost(ec.schema._schema, ec.graphql_document, ec.operation_name,
                                   ec.variables or {}, _visible_locations(ec.context))
            if cost > self.model.max_cost:
                raise LimitExceeded(
                    f"Query is too expensive: cost {_count(cost)} is over the maximum of "
                    f"{self.model.max_cost} (limit max_cost); ask for fewer items or fields",
                    "max_cost", self.model.max_cost, cost=min(cost, MAX_REPORTED))
        yield


def _visible_locations(context: Any) -> int:
    graph = getattr(context, "graph", None)
    catalog = getattr(graph, "catalog", None)
    if catalog is None:
        return DEFAULT_LIST_SIZE
    principal = getattr(context, "principal", None)
    allowed = getattr(principal, "locations", None)
    return max(1, len(catalog.locations) if allowed is None else len(allowed))


class LimitErrors(SchemaExtension):
    """Marks the token limit's parse error like the other limits and the fields' page-size
    errors (``BAD_USER_INPUT`` with ``limit: max_page_size``); without introspection, drops
    "Did you mean ...?" suggestions that would reveal the schema."""

    def __init__(self, max_tokens: int, introspection: bool) -> None:
        self.max_tokens = max_tokens
        self.introspection = introspection

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as exc:  # ParserCache's parse errors escape the operation
            self._mark(exc)
            raise
        result = self.execution_context.result
        for error in getattr(result, "errors", None) or ():
            self._mark(error)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Streamed results (WebSocket, SSE, multipart) leave before on_operation resumes:
        the same treatment for each of them, before it is sent."""
        for error in getattr(result, "errors", None) or ():
            self._mark(error)
        yield None

    def _mark(self, error: GraphQLError) -> None:
        if _TOKENS_MESSAGE in error.message:
            error.message = (f"Query is too long: more than {self.max_tokens} tokens "
                             "(limit max_tokens)")
            error.extensions = {"code": LIMIT_CODE, "limit": "max_tokens",
                                "max": self.max_tokens}
        elif page := _PAGE_MESSAGE.match(error.message):
            error.extensions = {**(error.extensions or {}), "limit": "max_page_size",
                                "max": int(page.group(1))}
        elif not self.introspection and "Did you mean" in error.message:
            error.message = _SUGGESTION.sub("", error.message)


def limit_extensions(settings: Settings) -> list[Callable[[], SchemaExtension]]:
    """Schema extension factories enforcing every limit; the rules inside are built here,
    once, so the validation cache keys stay stable."""
    rules = validation_rules(settings)
    model = CostModel(settings.max_cost, settings.max_page_size)
    max_tokens, introspection = settings.max_tokens, settings.introspection
    return [
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
        lambda: AddValidationRules(rules),
        lambda: QueryCost(model),
        lambda: LimitErrors(max_tokens, introspection),
    ]


__all__ = ["LIMIT_CODE", "MAX_ID_LENGTH", "MAX_JSON_DEPTH", "CostModel", "LimitExceeded",
           "NestedTooDeep", "QueryCost", "limit_extensions", "loads", "validation_rules"]
