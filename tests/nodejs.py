"""Node.js projects under tests/ (real third-party clients and federation tools), for pytest.

- :func:`npm_install` runs ``npm ci`` (pinned by the project's ``package-lock.json``) into its
  git-ignored ``node_modules``, only when what is installed differs from the lock.
- :func:`run_client` runs one scenario script of ``tests/clients`` (see its ``lib.mjs``) to its
  end and returns a :class:`NodeRun`: the JSON lines it printed, its result, and its stderr,
  where every ``console.*`` call of the client libraries lands (``NodeRun.console``).
- :class:`ClientScript` runs one alongside the test (``async with``), for scenarios where the
  test acts in between: wait for a message (``await script.message("subscribed")``), write
  a line to its stdin (``await script.send({...})``), then ``await script.finish()``.
  ``ClientScript(name, argv=..., env=...)`` runs any program that prints text (the README's
  examples) the same way, each line a ``"line"`` message.

Scripts run with ``--conditions=development`` so client libraries with a development build
(Apollo Client's ``__DEV__``) print the warnings a developer would see.
Tests that need Node are marked :data:`needs_node`: skipped, with the reason, only where
``node``/``npm`` are not installed.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
CLIENTS = TESTS / "clients"
NODE = shutil.which("node")
NPM = shutil.which("npm")

needs_node = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not installed: no JavaScript client to run "
           "(apt-get install nodejs npm)")


def _lock_packages(path: Path) -> dict[str, Any]:
    packages: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["packages"]
    return {name: spec.get("version") for name, spec in packages.items() if name}


def npm_install(project: Path) -> None:
    """``npm ci`` into ``project/node_modules`` unless it already matches the lock.

    One process at a time per project (pytest-xdist workers share the checkout): the others
    wait on a file lock, then find it installed."""
    lock = project / "package-lock.json"
    installed = project / "node_modules" / ".package-lock.json"
    digest = hashlib.sha256(str(project).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"retailgraph-npm-{digest}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if installed.exists() and _lock_packages(installed) == _lock_packages(lock):
            return
        assert NPM is not None
        result = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                                 "--prefer-offline"], cwd=project, capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def node_env() -> dict[str, str]:
    assert NODE is not None
    return {"PATH": str(Path(NODE).parent), "HOME": str(Path.home())}


@dataclass
class NodeRun:
    """What a scenario script printed: its JSON lines, exit status and stderr."""

    script: str
    plain: bool = False
    returncode: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    def values(self, kind: str) -> list[Any]:
        return [m["value"] for m in self.messages if m["type"] == kind]

    @property
    def result(self) -> Any:
        """The script's ``finish()`` value; fails the test with its output if it had none."""
        results = self.values("result")
        assert self.returncode == 0, self.describe()
        assert len(results) == 1, self.describe()
        return results[0]

    @property
    def console(self) -> list[str]:
        """Each ``console.*`` call the client libraries made, as ``[console.LEVEL] text``."""
        return [line for line in self.stderr.splitlines() if line.startswith("[console.")]

    def describe(self) -> str:
        return (f"{self.script} exited {self.returncode}\nstdout: "
                f"{json.dumps(self.messages, indent=1)[:4000]}\nstderr: {self.stderr[-4000:]}")


def _parse(run: NodeRun, line: str) -> None:
    if run.plain:  # a program that prints text: each line is a message of type "line"
        run.messages.append({"type": "line", "value": line.rstrip("\r\n")})
        return
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict) or "type" not in message:
        raise AssertionError(f"{run.script} printed a line that is not a message: {line!r}\n"
                             f"{run.describe()}")
    run.messages.append(message)


def _argv(script: str, config: dict[str, Any]) -> list[str]:
    assert NODE is not None, "mark the test with tests.nodejs.needs_node"
    npm_install(CLIENTS)
    path = CLIENTS / script
    assert path.is_file(), path
    return [NODE, "--conditions=development", str(path), json.dumps(config)]


def run_client(script: str, config: dict[str, Any], timeout: float = 90) -> NodeRun:
    """Run ``tests/clients/<script>`` with ``config`` to its end (blocking: sync tests)."""
    run = NodeRun(script)
    done = subprocess.run(_argv(script, config), cwd=CLIENTS, env=node_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    run.returncode, run.stderr = done.returncode, done.stderr
    for line in done.stdout.splitlines():
        _parse(run, line)
    return run


class ClientScript:
    """A scenario script running alongside an async test (``async with ClientScript(...)``)."""

    def __init__(self, script: str, config: dict[str, Any] | None = None, *,
                 argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """``tests/clients/<script>`` with ``config``; or, given ``argv`` (and ``env``), any
        program that prints plain text (a README example), each line a ``"line"`` message."""
        self.run = NodeRun(script, plain=argv is not None)
        self._argv = argv if argv is not None else _argv(script, config or {})
        self._env = env if env is not None else node_env()
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self._read = 0

    async def __aenter__(self) -> ClientScript:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, cwd=CLIENTS, env=self._env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        # Read stderr all along: a full pipe would stall a chatty script.
        assert self._process.stderr is not None
        self._stderr = asyncio.create_task(self._process.stderr.read())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._stderr is not None:
            self.run.stderr = (await self._stderr).decode()

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "use `async with ClientScript(...)`"
        return self._process

    async def message(self, kind: str, seconds: float = 30) -> Any:
        """The value of the next message of type ``kind`` (earlier ones of other types are
        kept in ``run.messages``); fails with the script's output if it ends first."""
        assert self.process.stdout is not None
        async with asyncio.timeout(seconds):
            while True:
                for message in self.run.messages[self._read:]:
                    self._read += 1
                    if message["type"] == kind:
                        return message["value"]
                line = await self.process.stdout.readline()
                if not line:
                    await self._ended()
                    raise AssertionError(f"no {kind!r} message: {self.run.describe()}")
                _parse(self.run, line.decode())

    async def send(self, value: Any) -> None:
        """One JSON line on the script's stdin (its ``nextInput()``)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(value).encode() + b"\n")
        await self.process.stdin.drain()

    async def finish(self, seconds: float = 60) -> NodeRun:
        """Wait for the script to end; its remaining output is parsed into ``run``."""
        async with asyncio.timeout(seconds):
            await self._ended()
        return self.run

    async def _ended(self) -> None:
        process = self.process
        assert process.stdout is not None
        assert self._stderr is not None
        rest = await process.stdout.read()
        await process.wait()
        self.run.stderr = (await self._stderr).decode()
        for line in rest.decode().splitlines():
            _parse(self.run, line)
        self.run.returncode = process.returncode
