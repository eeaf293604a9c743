"""Run every benchmark and write one table of figures against their goals (issue 15).

    python tests/benchmarks/run_all.py            # every figure at the issue's sizes (<= 20 min)
    python tests/benchmarks/run_all.py --quick    # a smoke version at small sizes (< 3 min)
    python tests/benchmarks/run_all.py --only reconcile cold_read
    python tests/benchmarks/run_all.py --args 'reconcile=--skus 20000'   # other sizes

Each ``bench_*.py`` runs in its own process, one after another (they would otherwise share
the cores and measure each other), with ``--json PATH``; its result is read through the
contract in ``contract.py`` (``{"machine", "figures": [{"name", "value", "unit", "goal",
"met"}]}``). A benchmark whose JSON has no ``figures`` yet is read by a small adapter below.
A benchmark that fails, times out or writes nothing is a row that says so: the table never
silently drops one.

The table (machine, date, each figure, its goal, met or missed by how much) replaces what is
between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in tests/benchmarks/README.md
and in the README's Benchmarks section; all results go to ``--out`` (default
tests/benchmarks/results-all.json). ``--quick`` writes its table only with ``--write``: a
smoke run's small sizes do not measure the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages importable
from tests.benchmarks import contract  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
Figure = dict[str, Any]


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: list[str]
    quick: list[str]
    timeout: float  # seconds, full size (quick: a fifth, at least 120)
    adapt: Callable[[dict[str, Any]], list[Figure]] | None = None
    # The script has no --json: its printed output goes to this reader instead.
    stdout: Callable[[str], list[Figure]] | None = None


def _runs(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    runs = report.get("runs", [])
    if isinstance(runs, dict):
        return list(runs.items())
    return [(str(i), r) for i, r in enumerate(runs)]


def adapt_subscriptions(r: dict[str, Any]) -> list[Figure]:
    p = r.get("params", {})
    size = f"{p.get('subscribers')} subscribers, {p.get('rate')} events/s asked"
    lat = r["latency_ms"]
    return [
        contract.figure(f"fan-out, {size}: ack -> received p99", lat["p99"], "ms", "< 50 ms",
                        lat["p99"] < 50),
        contract.figure(f"fan-out, {size}: dropped changes", r["dropped"], "changes", "0",
                        r["dropped"] == 0),
        contract.figure(f"fan-out, {size}: events/s achieved", r["achieved_rate"], "events/s",
                        f">= {p.get('rate')} events/s",
                        r["achieved_rate"] >= 0.98 * float(p.get("rate") or 0)),
        contract.figure("memory per idle subscription", r["kb_per_idle_subscription"], "KB",
                        "< 20 KB", r["kb_per_idle_subscription"] < 20)]


def adapt_webhook_ack(r: dict[str, Any]) -> list[Figure]:
    out = []
    for _, run in _runs(r):
        rt = run.get("webhook_round_trip_ms", {})
        out.append(contract.figure(
            f"webhook ack with {run['subscribers']} subscribers: round trip p99",
            rt.get("p99"), "ms", None, None, note=f"{run['achieved_rate']} events/s achieved, "
            f"{run['dropped']} dropped"))
    return out


def adapt_sync(r: dict[str, Any]) -> list[Figure]:
    out = []
    for _, run in _runs(r):
        confirmed = run["received_to_confirmed_ms"]
        at_100 = float(run["rate"]) == 100  # the goal: p99 < 1 s at 100 events/s
        out.append(contract.figure(
            f"sync push at {run['rate']} events/s: received -> shop confirmed p99",
            confirmed["p99"], "ms", "< 1000 ms" if at_100 else None,
            confirmed["p99"] < 1000 if at_100 else None,
            note=f"{run['keys_written_more_than_once']} keys written twice, "
                 f"{run['cells_wrong_at_the_end']} cells wrong at the end"))
    return out


def adapt_reservations(r: dict[str, Any]) -> list[Figure]:
    """Issue 14's goal: >= 1,000 reservations/s with p99 < 20 ms (both must hold)."""
    return [contract.figure(f"reservations, {name}", run["rps"], "req/s",
                            ">= 1000 req/s, p99 < 20 ms",
                            run["rps"] >= 1000 and run["p99_ms"] < 20,
                            note=f"p99 {run['p99_ms']} ms, consistent: {run['consistent']}")
            for name, run in _runs(r)]


def adapt_intake(r: dict[str, Any]) -> list[Figure]:
    """bench_intake.py: signed webhooks replayed at the gateway with N worker processes."""
    goal = r.get("goal_events_per_s", 2000)
    return [contract.figure(
        f"durable webhook intake, {run['workers']} worker(s)"
        + "".join(f", {k}={v}" for k, v in run.get("env", {}).items()),
        run["events_per_s"], "events/s", f">= {goal} events/s", run["events_per_s"] >= goal,
        note=f"p99 {run['p99_ms']} ms, {run['gateway_cpu_ms_per_event']} ms gateway CPU "
             f"per event, {run['non_200']} non-200")
        for run in r["runs"]]


def adapt_intake_trips(r: dict[str, Any]) -> list[Figure]:
    """bench_intake_trips.py: Redis round trips and commands per acknowledged webhook."""
    return [contract.figure(f"Redis round trips per webhook, {name}",
                            run["round_trips_per_event"], "round trips", None, None,
                            note=f"{run['commands_per_event']} commands per event")
            for name, run in r.items() if isinstance(run, dict)
            and "round_trips_per_event" in run]


def adapt_drift(r: dict[str, Any]) -> list[Figure]:
    summary = r.get("summary", r)
    differ = summary.get("cells_differing", summary.get("differ"))
    if isinstance(differ, list):
        differ = len(differ)
    return [contract.figure("cache drift without faults: cells differing at the end", differ,
                            "cells", "0", differ == 0)]


def adapt_json(text: str) -> list[Figure]:
    """bench_json.py prints a Markdown table: payload, bytes, then microseconds per library."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if not lines:
        return []
    libraries = [c.strip().removesuffix(" µs") for c in lines[0].strip("|").split("|")[2:]]
    out = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        times = dict(zip(libraries, cells[2:], strict=False))
        out.append(contract.figure(
            f"{cells[0]} ({cells[1]} bytes), orjson", float(times.get("orjson", "nan")), "µs",
            None, None, note=", ".join(f"{k} {v} µs" for k, v in times.items() if k != "orjson")))
    return out


def adapt_cache(text: str) -> list[Figure]:
    """bench_cache.py prints a Markdown table; read its rows."""
    rows = {m.group(1).strip(): float(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\| ([^|]+) \| ([\d,.]+) \|", text, re.M)}
    out = []
    intake = rows.get("webhook intake (durable)")
    if intake is not None:
        out.append(contract.figure("durable webhook intake, one node, no subscribers",
                                   round(intake), "events/s", ">= 2000 events/s",
                                   intake >= 2000))
    ceiling, cached = rows.get("static ceiling"), rows.get("single SKU, response cache")
    if ceiling and cached:
        ratio = round(cached / ceiling, 2)
        # The goal's figure (against a bare Starlette app) is bench_http.py's.
        out.append(contract.figure("cached query vs a static route in the gateway app", ratio,
                                   "x", None, None,
                                   note=f"{cached:,.0f} vs {ceiling:,.0f} req/s"))
    if not out:
        raise ValueError("no rows read from bench_cache.py's output")
    return out


BENCHES = [
    Bench("reconcile", "bench_reconcile.py", ["--skus", "100000"], ["--skus", "1000"], 900),
    Bench("cold_read", "bench_cold_read.py", ["--requests", "300"],
          ["--requests", "40", "--warmup", "10", "--skus", "200"], 180),
    Bench("cache", "bench_cache.py", ["--duration", "10"], ["--duration", "3",
                                                            "--webhooks", "2000"], 300,
          stdout=adapt_cache),
    Bench("http", "bench_http.py", [], ["--duration", "2", "--rounds", "1", "--no-hive"], 420),
    Bench("fanout", "bench_subscriptions.py",
          ["--subscribers", "10000", "--rate", "500", "--duration", "60"],
          ["--subscribers", "100", "--rate", "100", "--duration", "5", "--settle", "2"],
          600, adapt_subscriptions),
    Bench("webhook_ack", "bench_webhook_ack.py",
          ["--subscribers", "0", "1000", "--rate", "500", "--duration", "20"],
          ["--subscribers", "0", "50", "--rate", "50", "--duration", "4", "--settle", "1"],
          300, adapt_webhook_ack),
    Bench("sync", "bench_sync.py", ["--rates", "100", "500", "--duration", "20"],
          ["--rates", "50", "--duration", "4", "--settle", "1"], 300, adapt_sync),
    Bench("reservations", "bench_reservations.py", ["--duration", "10"],
          ["--duration", "2"], 200, adapt_reservations),
    Bench("stock_events", "bench_stock_events.py", ["--entries", "10000", "100000"],
          ["--entries", "5000"], 300),
    Bench("telemetry", "bench_telemetry.py", ["--requests", "300"], ["--requests", "20"], 300),
    Bench("drift", "bench_drift.py", ["--seconds", "60"], ["--seconds", "10"], 240,
          adapt_drift),
    Bench("intake", "bench_intake.py", [], ["--webhooks", "2000"], 300, adapt_intake),
    Bench("intake_trips", "bench_intake_trips.py", [], [], 300, adapt_intake_trips),
    Bench("json", "bench_json.py", [], ["--rounds", "2000"], 120, stdout=adapt_json),
]
# Benchmarks other helpers add (bench_http.py, ...) run with their defaults until listed above.
EXTRA_TIMEOUT = 300


def discover() -> list[Bench]:
    known = {b.script for b in BENCHES}
    extra = [Bench(p.stem.removeprefix("bench_"), p.name, [], [], EXTRA_TIMEOUT)
             for p in sorted(HERE.glob("bench_*.py")) if p.name not in known]
    return [*BENCHES, *extra]


def run_one(bench: Bench, quick: bool, tmp: Path,
            override: list[str] | None = None) -> dict[str, Any]:
    out_path = tmp / f"{bench.name}.json"
    args = override if override is not None else bench.quick if quick else bench.full
    cmd = [sys.executable, str(HERE / bench.script), *args]
    if not bench.stdout:
        cmd += ["--json", str(out_path)]
    timeout = max(120.0, bench.timeout / 5) if quick else bench.timeout
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started, load = time.monotonic(), round(os.getloadavg()[0], 2)
    print(f"[run_all] {bench.name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"benchmark": bench.name, "command": " ".join(
        ["python", f"tests/benchmarks/{bench.script}", *args]), "load_average_at_start": load}
    if override is not None:
        result["sized"] = " ".join(override)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        result.update(error=f"timed out after {timeout:.0f} s", figures=[])
        return result
    finally:
        result["wall_s"] = round(time.monotonic() - started, 1)
    (tmp / f"{bench.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:]
        result.update(error=f"exit {proc.returncode}: {tail[0][:200] if tail else ''}",
                      figures=[])
        return result
    try:
        if bench.stdout:
            result["figures"] = bench.stdout(proc.stdout)
        else:
            report = json.loads(out_path.read_text())
            result["report"] = report
            if isinstance(report.get("figures"), list):
                result["figures"] = report["figures"]
            elif bench.adapt is not None:
                result["figures"] = bench.adapt(report)
            else:
                raise ValueError("its JSON has no figures and run_all.py has no adapter")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result.update(error=f"result not read: {type(exc).__name__}: {exc}", figures=[])
    return result


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _by_how_much(fig: Figure) -> str:
    """'met', or 'missed by ...' against the goal's number (when the goal names one)."""
    met, goal, value = fig.get("met"), fig.get("goal"), fig.get("value")
    if met is None or goal is None:
        return "no goal"
    if met:
        return "**met**"
    m = re.search(r"(<=|>=|<|>|=)?\s*([\d,.]+)", str(goal))
    if m is None or not isinstance(value, (int, float)):
        return "**missed**"
    target = float(m.group(2).replace(",", ""))
    if target and m.group(1) in ("<", "<="):
        return f"**missed** ({value / target:.1f}x the goal)"
    if target and m.group(1) in (">", ">="):
        return f"**missed** ({value / target:.0%} of the goal)"
    return f"**missed** (by {_number(abs(value - target))} {fig.get('unit', '')})".rstrip()


def table(results: list[dict[str, Any]], quick: bool) -> str:
    m = contract.machine()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(r.get("wall_s", 0) for r in results)
    lines = [BEGIN,
             f"Measured by `python tests/benchmarks/run_all.py{' --quick' if quick else ''}` "
             f"on {date}: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Python "
             f"{m['python']}, {m['os']}; {total / 60:.1f} min in all. Load average at each "
             "benchmark's start in its row (other work on the machine shows there).",
             "", "| benchmark | figure | value | goal | verdict | load | note |",
             "|---|---|---:|---|---|---:|---|"]
    for r in results:
        if r.get("sized"):
            r = {**r, "benchmark": f"{r['benchmark']} (`{r['sized']}`)"}
        if r.get("error"):
            lines.append(f"| {r['benchmark']} | - | - | - | **not measured**: "
                         f"{r['error'].replace('|', '/')} | {r['load_average_at_start']} | |")
            continue
        for fig in r["figures"]:
            value = fig.get("value")
            shown = "-" if value is None else f"{_number(value)} {fig.get('unit', '')}".strip()
            note = str(fig.get("note", "")) + (f" p99 {_number(fig['p99'])} {fig['unit']}"
                                               if "p99" in fig else "")
            verdict = "smoke size" if quick and fig.get("goal") else _by_how_much(fig)
            lines.append(f"| {r['benchmark']} | {fig['name']} | {shown} | "
                         f"{fig.get('goal') or '-'} | {verdict} | "
                         f"{r['load_average_at_start']} | {note.strip().replace('|', '/')} |")
    lines.append(END)
    return "\n".join(lines)


def replace_between(path: Path, block: str) -> bool:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + block + rest.split(END, 1)[1])
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, < 3 min (a smoke run)")
    p.add_argument("--only", nargs="+", default=[], help="these benchmarks only")
    p.add_argument("--write", action="store_true",
                   help="with --quick or --only: still write the READMEs' table")
    p.add_argument("--out", default=str(HERE / "results-all.json"))
    p.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                   help="run benchmark NAME with these arguments instead (e.g. "
                        "'reconcile=--skus 20000'); the table shows the command it ran")
    args = p.parse_args()
    overrides = {name: value.split() for name, _, value in
                 (item.partition("=") for item in args.args)}
    benches = [b for b in discover() if not args.only or b.name in args.only]
    tmp = Path(tempfile.mkdtemp(prefix="run-all-"))
    results = [run_one(b, args.quick, tmp, overrides.get(b.name)) for b in benches]
    block = table(results, args.quick)
    print(block)
    print(f"[run_all] logs in {tmp}", file=sys.stderr)
    if (args.quick or args.only) and not args.write:
        return
    if args.only and Path(args.out).exists():
        # Re-measured rows replace theirs; the other benchmarks' rows stay as they were.
        before = json.loads(Path(args.out).read_text()).get("results", [])
        fresh = {r["benchmark"] for r in results}
        results = [*(r for r in before if r["benchmark"] not in fresh), *results]
        order = [b.name for b in discover()]
        results.sort(key=lambda r: order.index(r["benchmark"])
                     if r["benchmark"] in order else len(order))
        block = table(results, args.quick)
    Path(args.out).write_text(json.dumps({"machine": contract.machine(), "quick": args.quick,
                                          "results": results}, indent=2, default=str))
    for readme in (HERE / "README.md", ROOT / "README.md"):
        if not replace_between(readme, block):
            print(f"[run_all] {readme} has no {BEGIN} ... {END} markers", file=sys.stderr)


if __name__ == "__main__":
    main()
