"""The benchmarks' JSON contract (read by ``run_all.py``).

Every ``bench_*.py`` accepts ``--json PATH`` and writes there one object::

    {"benchmark": "<name>", "machine": {...machine()...},
     "figures": [{"name": str, "value": float, "unit": str, "goal": str, "met": bool}, ...],
     ...anything else the benchmark reports...}

``goal`` is the target as text (``"< 60 s"``, ``">= 2000 events/s"``); ``met`` says whether
``value`` reaches it. A figure may carry more keys (``p99``, ``note``); ``run_all.py`` shows
``note`` next to it.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was when the run started."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                  .splitlines() if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "load_average": round(os.getloadavg()[0], 2)}


def figure(name: str, value: float, unit: str, goal: str | None, met: bool | None,
           **extra: Any) -> dict[str, Any]:
    """One figure; ``goal`` None for a figure without one (``run_all.py``: "no goal")."""
    return {"name": name, "value": value, "unit": unit, "goal": goal, "met": bool(met),
            **extra}


def write(path: str, benchmark: str, figures: list[dict[str, Any]],
          **extra: Any) -> dict[str, Any]:
    """The result object; written to ``path`` unless it is empty."""
    out = {"benchmark": benchmark, "machine": machine(), "figures": figures, **extra}
    if path:
        Path(path).write_text(json.dumps(out, indent=2, default=str))
    return out


def wrk_report(out: str) -> dict[str, float]:
    """What ``wrk --latency`` printed: requests, requests/s, p50/p90/p99 latency in ms and
    the non-2xx/3xx answers."""

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    def number(pattern: str) -> float:
        m = re.search(pattern, out)
        assert m, out
        return float(m.group(1))

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": number(r"(\d+) requests in"), "rps": number(r"Requests/sec:\s+([\d.]+)"),
            "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
            "non2xx": float(errors.group(1)) if errors else 0.0}
