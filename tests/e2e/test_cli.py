"""The ``retailgraph`` command line: schema, serve --check, configuration errors and
environment overrides, and real ``demo`` / ``sim`` processes on free loopback ports."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway import config
from gateway.cli import build_parser, main
from schema import sdl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "retailgraph.example.toml"
SECRETS = ("demo-pos-token", "demo-pos-webhook-secret", "demo-wms-token",
           "demo-wms-webhook-secret", "demo-erp-token", "demo-erp-webhook-secret",
           "demo-commerce-token", "demo-commerce-webhook-secret")


def command() -> list[str]:
    """The installed console script (next to this interpreter), else the module."""
    script = Path(sys.executable).with_name("retailgraph")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILGRAPH_")}
    return env | extra


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command(), *args], capture_output=True, text=True, timeout=60,
                          env=env or clean_env(), cwd=ROOT, check=False)


def port_block(size: int) -> int:
    """A port P with P..P+size-1 all free on loopback (demo uses PORT+1..PORT+4): from
    15000-19999, below the ephemeral range (where an outgoing connection may take a port
    before the demo binds it) and apart from the test servers' ports (tests.support.PORTS)."""
    rng = random.SystemRandom()
    for _ in range(50):
        base = rng.randrange(15000, 20000 - size)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A retailgraph process in its own session; killed (with children) if still running."""
    proc = subprocess.Popen([*command(), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=ROOT,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for(proc: subprocess.Popen[str], url: str, headers: dict[str, str] | None = None,
             seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode}:\n{output}")
        try:
            response = httpx.get(url, headers=headers, timeout=2)
            if response.status_code < 500:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {seconds} s")
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen[str]) -> str:
    """Ctrl+C: the process must stop cleanly (exit 0) within a few seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("did not stop within 15 s of SIGINT") from None
    assert proc.returncode == 0, output
    return output


# -- schema --------------------------------------------------------------------------------------

def test_schema_prints_the_sdl(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == sdl()
    result = run("schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == sdl()
    assert "type Query {" in result.stdout


# -- serve --check and configuration -------------------------------------------------------------

def test_serve_check_prints_backends_without_secrets(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RETAILGRAPH_"):
            monkeypatch.delenv(name)
    assert main(["serve", "--config", str(EXAMPLE), "--check"]) == 0
    out = capsys.readouterr().out
    for name, fmt, port in (("pos", "square", 8001), ("wms", "epcis", 8002),
                            ("erp", "erp", 8003), ("commerce", "shopify", 8004)):
        line = next(x for x in out.splitlines() if x.startswith(f"{name}:"))
        assert f"format={fmt}" in line
        assert f"base_url=http://127.0.0.1:{port}" in line
        assert "token=set" in line
        assert "webhook_secret=set" in line
    assert "http://127.0.0.1:8000/graphql" in out
    for secret in SECRETS:
        assert secret not in out


def test_serve_check_warns_about_each_backend_without_a_webhook_secret(
        tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for name in ("wms", "commerce"):
        text = text.replace(f'webhook_secret = "demo-{name}-webhook-secret"',
                            'webhook_secret = ""')
    path = tmp_path / "retailgraph.toml"
    path.write_text(text)
    result = run("serve", "--config", str(path), "--check")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert "backends.wms.webhook_secret is not set" in warnings[0]
    assert "RETAILGRAPH_WMS_WEBHOOK_SECRET" in warnings[0]
    assert "backends.commerce.webhook_secret is not set" in warnings[1]
    # Configured through the environment instead: no warning.
    env = clean_env(RETAILGRAPH_WMS_WEBHOOK_SECRET="from-the-environment",
                    RETAILGRAPH_COMMERCE_WEBHOOK_SECRET="from-the-environment")
    result = run("serve", "--config", str(path), "--check", env=env)
    assert "warning:" not in result.stderr
    assert run("serve", "--config", str(EXAMPLE), "--check").stderr == ""


def test_logging_options_before_or_after_the_subcommand() -> None:
    for argv in (["--log-format", "json", "--log-level", "DEBUG", "schema"],
                 ["schema", "--log-format", "json", "--log-level", "DEBUG"]):
        args = build_parser().parse_args(argv)
        assert (args.command, args.log_format, args.log_level) == ("schema", "json", "DEBUG")
    # Given only before it, the subcommand does not reset them.
    args = build_parser().parse_args(["--log-format", "text", "serve", "--config", "x"])
    assert (args.log_format, args.log_level) == ("text", "INFO")
    # In a real process: the check's log lines are JSON after `serve` too.
    result = run("serve", "--config", str(EXAMPLE), "--check", "--log-format", "json",
                 "--log-level", "DEBUG")
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stderr.splitlines() if line.strip()]
    assert logged, "DEBUG logging produced no line"
    assert all(line.startswith("{") for line in logged), logged


@pytest.mark.parametrize(("argv", "unknown"), [
    (["serve", "--config", "x.toml", "--chek"], "--chek"),
    (["demo", "--prot", "9000"], "--prot 9000"),
    (["sim", "pos", "--port", "1", "--nope"], "--nope"),
])
def test_a_wrong_option_prints_the_subcommands_usage(argv: list[str], unknown: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: retailgraph {argv[0]} "), result.stderr
    assert lines[-1] == f"retailgraph {argv[0]}: error: unrecognized arguments: {unknown}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {"RETAILGRAPH_PORT": "9100",
               "RETAILGRAPH_POS_WEBHOOK_SECRET": "rotated-pos-secret",
               "RETAILGRAPH_COMMERCE_BASE_URL": "http://shop.example:8443",
               "RETAILGRAPH_ERP_TIMEOUT": "2.5",
               "RETAILGRAPH_UNRELATED": "ignored"}
    settings = config.load(EXAMPLE, environ=environ)
    assert settings.port == 9100
    assert settings.backends["pos"].webhook_secret == "rotated-pos-secret"
    assert settings.backends["commerce"].base_url == "http://shop.example:8443"
    assert settings.backends["erp"].timeout == 2.5
    # Untouched settings keep the file's values.
    assert settings.host == "127.0.0.1"
    assert settings.backends["wms"].webhook_secret == "demo-wms-webhook-secret"
    assert settings.backends["commerce"].token == "demo-commerce-token"
    # Without overrides, the file is what counts.
    plain = config.load(EXAMPLE, environ={})
    assert plain.port == 8000
    assert plain.backends["pos"].webhook_secret == "demo-pos-webhook-secret"
    with pytest.raises(config.ConfigError, match="RETAILGRAPH_PORT"):
        config.load(EXAMPLE, environ={"RETAILGRAPH_PORT": "eighty"})


def test_serve_check_applies_environment_in_a_real_process() -> None:
    env = clean_env(RETAILGRAPH_PORT="9100", RETAILGRAPH_POS_WEBHOOK_SECRET="from-env-secret",
                    RETAILGRAPH_COMMERCE_BASE_URL="http://shop.example:8443")
    result = run("serve", "--config", str(EXAMPLE), "--check", env=env)
    assert result.returncode == 0, result.stderr
    assert "http://127.0.0.1:9100/graphql" in result.stdout
    commerce = next(x for x in result.stdout.splitlines() if x.startswith("commerce:"))
    assert "base_url=http://shop.example:8443" in commerce
    assert "from-env-secret" not in result.stdout
    for secret in SECRETS:
        assert secret not in result.stdout


def write_config(tmp_path: Path, drop: str = "", extra: str = "") -> Path:
    """The example config without backend ``drop``, plus ``extra`` lines."""
    text = EXAMPLE.read_text()
    if drop:
        start = text.index(f"[backends.{drop}]")
        end = text.find("[backends.", start + 1)
        text = text[:start] + (text[end:] if end >= 0 else "")
    path = tmp_path / "retailgraph.toml"
    path.write_text(text + extra)
    return path


@pytest.mark.parametrize(("drop", "extra", "names"), [
    ("erp", "", "erp"),
    ("pos", "", "square"),
    ("", "\n[backends.extra]\nformat = \"fax\"\nbase_url = \"http://fax\"\n",
     "backends.extra.format"),
    ("", "\n[backends.wms2]\nformat = \"epcis\"\n", "backends.wms2"),
    ("", "\n[metrics]\nenabled = true\n", "metrics"),
])
def test_bad_config_exits_2_naming_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               drop: str, extra: str, names: str) -> None:
    path = write_config(tmp_path, drop, extra)
    assert main(["serve", "--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert names in err


def test_unknown_key_exits_2_naming_it(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace('[backends.pos]\n', '[backends.pos]\ncolour = "red"\n')
    path = tmp_path / "retailgraph.toml"
    path.write_text(text)
    result = run("serve", "--config", str(path), "--check")
    assert result.returncode == 2
    assert "backends.pos.colour" in result.stderr
    assert result.stdout == ""
    gateway_typo = tmp_path / "typo.toml"
    gateway_typo.write_text(EXAMPLE.read_text().replace("port = 8000", "prot = 8000"))
    result = run("serve", "--config", str(gateway_typo), "--check")
    assert result.returncode == 2
    assert "gateway.prot" in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["serve", "--config", str(missing), "--check"]) == 2
    assert str(missing) in capsys.readouterr().err


# -- real processes ------------------------------------------------------------------------------

def test_demo_starts_answers_and_stops_on_ctrl_c() -> None:
    port = port_block(5)
    with process("demo", "--port", str(port), "--skus", "12", "--stores", "2",
                 "--activity", "20") as proc:
        health = wait_for(proc, f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200
        response = httpx.post(f"http://127.0.0.1:{port}/graphql", timeout=30, json={
            "query": '{ product(sku: "SKU-000001") { sku name stock { source } '
                     'prices { source } } locations { id } }'})
        assert response.status_code == 200
        body = response.json()
        assert "errors" not in body, body
        product = body["data"]["product"]
        assert product["sku"] == "SKU-000001"
        assert {s["source"] for s in product["stock"]} == {"pos", "wms"}
        assert {p["source"] for p in product["prices"]} == {"erp", "commerce", "pos"}
        assert [x["id"] for x in body["data"]["locations"]] == ["ST001", "ST002", "WH01", "WH02"]
        output = interrupt(proc)
    # Stopping is quiet: the activity stops first, then the gateway, then the simulators, so
    # nothing reports a simulator as unavailable or a backend as down on the way out.
    assert "unavailable" not in output
    assert " is down" not in output
    assert "WARNING" not in output, output
    assert "ERROR" not in output, output
    # The banner printed every URL.
    assert f"http://127.0.0.1:{port}/graphql" in output
    assert f"http://127.0.0.1:{port}/healthz" in output
    for offset in range(1, 5):
        assert f"http://127.0.0.1:{port + offset}" in output


def test_sim_serves_one_backend_alone() -> None:
    port = port_block(1)
    with process("sim", "pos", "--port", str(port), "--stores", "3") as proc:
        url = f"http://127.0.0.1:{port}/v2/locations"
        denied = wait_for(proc, url)
        assert denied.status_code == 401
        response = httpx.get(url, headers={"Authorization": "Bearer demo-pos-token"}, timeout=10)
        assert response.status_code == 200
        locations = response.json()["locations"]
        assert len(locations) == 3
        assert all(loc["id"] and loc["name"] for loc in locations)
        interrupt(proc)
