"""``--workers N``: several gateway processes sharing one port (``SO_REUSEPORT``) and one
Redis, each built by the same composition root; what one acknowledges, every one serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli import interrupt, port_block, process, wait_for
from tests.e2e.test_replicas import ROOT, Replicas
from tests.helpers_webhooks import Signer, post

STOCK = '{ stockLevel(sku: "SKU-000003", locationId: "WH01") { onHand } }'


def pids_answering(url: str, want: int, within: float = 90) -> set[int]:
    """The worker pids seen on ``/healthz`` (a new connection each time) until ``want``
    different ones have answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + within
    while len(seen) < want and time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/healthz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if response.status_code == 200:
            seen.add(response.json()["pid"])
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Workers(Replicas):
    """One ``retailgraph serve --workers 2`` (the simulators in threads, as for replicas)."""

    def start(self, k: int) -> None:
        self.starts[k] += 1
        log = (self.workdir / f"replica-{k}-{self.starts[k]}.log").open("wb")
        self.procs[k] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "serve",
             "--config", str(self.config), "--port", str(self.ports[k]), "--insecure-no-auth",
             "--workers", "2"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()


def test_serve_with_two_workers_shares_the_port_and_the_state(
        redis_url: str, tmp_path: Path) -> None:
    with Workers(redis_url, tmp_path, 1) as serve:
        url = serve.url(0)
        supervisor = serve.pids()[0]
        workers = pids_answering(url, 2)
        assert len(workers) == 2, serve.output(0)
        assert supervisor not in workers
        # Acknowledged by one worker: every answer, whichever worker gives it, shows it.
        signer = Signer(serve.settings, serve.world)
        delivery = signer.epcis([signer.epcis_event(2, 0, 4321, 7)])
        assert post(url, delivery).status_code == 200
        answered: set[int] = set()
        deadline = time.monotonic() + 30
        while answered != workers and time.monotonic() < deadline:
            with httpx.Client(timeout=10) as client:  # a new connection: any worker
                pid = client.get(f"{url}/healthz").json()["pid"]
                body = client.post(f"{url}/graphql", json={"query": STOCK}).json()
            assert body["data"]["stockLevel"] == {"onHand": 4321}, body
            answered.add(pid)
        assert answered == workers
        assert serve.terminate(0) == 0, serve.output(0)
        # No worker outlives its supervisor.
        assert not [pid for pid in workers if alive(pid)]


def test_workers_die_with_a_killed_supervisor(redis_url: str, tmp_path: Path) -> None:
    with Workers(redis_url, tmp_path, 1) as serve:
        workers = pids_answering(serve.url(0), 2)
        assert len(workers) == 2
        serve.kill(0)  # kill -9: no chance to stop them
        deadline = time.monotonic() + 10
        while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)]


def test_demo_with_two_workers_answers_from_both_and_stops_on_ctrl_c() -> None:
    port = port_block(5)
    with process("demo", "--port", str(port), "--skus", "12", "--stores", "2",
                 "--activity", "20", "--workers", "2") as proc:
        wait_for(proc, f"http://127.0.0.1:{port}/healthz")
        workers = pids_answering(f"http://127.0.0.1:{port}", 2)
        assert len(workers) == 2
        assert proc.pid not in workers
        response = httpx.post(f"http://127.0.0.1:{port}/graphql", timeout=30, json={
            "query": '{ product(sku: "SKU-000001") { sku stock { source } } }'})
        assert response.status_code == 200
        assert "errors" not in response.json()
        output = interrupt(proc)
    assert "2 gateway worker processes" in output
    assert "WARNING" not in output, output
    assert "ERROR" not in output, output
    assert not [pid for pid in workers if alive(pid)]


@pytest.mark.parametrize("value", ["-1", "x"])
def test_workers_must_be_a_count(value: str) -> None:
    from gateway.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--config", "x.toml", "--workers", value])


def test_workers_default_to_one_and_zero_means_one_per_core() -> None:
    from gateway.cli import build_parser
    from gateway.serving import default_workers

    assert build_parser().parse_args(["serve", "--config", "x.toml"]).workers == 1
    assert build_parser().parse_args(["demo", "--workers", "0"]).workers == 0
    assert default_workers() >= 1
