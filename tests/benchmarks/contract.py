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
