"""Cache drift without faults: the demo's activity for a minute, reconciled every 2 s, then
every cell compared with every backend over real HTTP (``tests/soak.py``).

Nothing is injected, so nothing is lost: a run must never find a cell to repair. Before runs
waited for in-flight webhooks (``Reconciler._settle``) they "repaired" changes whose webhook
was still on its way, a few per minute at this rate (each a REPAIR event logged and published
next to the webhook's own). The 10-minute version is ``tests/benchmarks/bench_drift.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.soak import soak
from tests.support import Stack

RATE = 20  # operations per second, as `retailgraph demo --activity 20`
SECONDS = 60
INTERVAL = 2.0  # a reconciliation run every 2 s


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    running = Stack(redis_url, seed=3, skus=60, stores=3, warehouses=2)
    running.settings.reconcile_interval_seconds = INTERVAL
    with running:
        yield running


async def test_a_minute_of_activity_without_faults_drifts_nowhere(stack: Stack) -> None:
    result = await soak(stack, RATE, SECONDS, seed=5)
    summary = json.dumps({k: v for k, v in result.as_dict().items() if k != "activity"},
                         indent=1, default=str)
    # A loaded machine achieves less than the rate asked for (the activity never bursts to
    # catch up); it must still have changed stock all along and been reconciled repeatedly.
    assert sum(result.activity.values()) >= RATE * SECONDS / 6, result.activity
    assert len(result.runs) >= 5, summary
    assert result.pending_left == 0, summary
    # No run repaired anything, no REPAIR event was logged, no CACHE_DRIFT was ever listed.
    assert result.repairs == [], summary
    assert not any(r.get("repaired") for r in result.runs), summary
    assert dict(result.drift_findings) == {}, summary
    # Every cell served equals its system of record; every cached cell equals its source.
    assert result.cells_compared == 60 * 5, summary
    assert result.cached_compared > 300, summary
    assert result.differ == [], summary
