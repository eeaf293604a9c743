"""Every GraphQL error gets its ``extensions.code`` in one place (gateway.http.graphql.ErrorCodes,
used for single results and for every streamed result of a subscription, on every transport)."""

from __future__ import annotations

import logging

import pytest
from graphql import GraphQLError

from gateway.http.graphql import ErrorCodes
from resolvers.errors import BackendTimeout, BadUserInput
from resolvers.store.client import RedisDeadlineExceeded, RedisNotAnswering


def coded(original: Exception) -> GraphQLError:
    error = GraphQLError("raw", path=["stockChanged"], original_error=original)
    ErrorCodes._process([error])
    return error


@pytest.mark.parametrize("original", [RedisDeadlineExceeded("XRANGE: deadline missed"),
                                      RedisNotAnswering("skipped: Redis is not answering")])
def test_a_redis_command_that_missed_its_deadline_is_service_unavailable(
        original: Exception, caplog: pytest.LogCaptureFixture) -> None:
    """A subscription's replay or a reservation's script that Redis did not answer in time:
    SERVICE_UNAVAILABLE with a retry hint, logged as a warning, never INTERNAL."""
    with caplog.at_level(logging.WARNING, "retailgraph.graphql"):
        error = coded(original)
    assert error.extensions == {"code": "SERVICE_UNAVAILABLE"}
    assert error.message.startswith("Redis did not answer in time; retry")
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_deliberate_errors_keep_their_codes_and_the_unexpected_are_internal(
        caplog: pytest.LogCaptureFixture) -> None:
    assert coded(BadUserInput("first must be at least 1")).extensions == {
        "code": "BAD_USER_INPUT"}
    assert coded(BackendTimeout("wms", "no answer")).extensions == {
        "code": "BACKEND_TIMEOUT", "backend": "wms"}
    with caplog.at_level(logging.ERROR, "retailgraph.graphql"):
        error = coded(ZeroDivisionError("boom"))
    assert (error.message, error.extensions) == ("Internal error", {"code": "INTERNAL"})
    assert [r.levelname for r in caplog.records] == ["ERROR"]
