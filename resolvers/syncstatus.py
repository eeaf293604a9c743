"""How current the gateway is with each source system, as records: what ``syncStatus`` shows.

``gateway/reconcile/synchealth.py`` keeps the statistics in Redis, detects gaps and heals them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

GAPS_KEPT = 50  # gaps kept per source, healed or not


@dataclass(frozen=True, slots=True)
class Lag:
    p50_ms: float | None
    p95_ms: float | None
    samples: int


@dataclass(frozen=True, slots=True)
class Gap:
    id: str
    source: str
    detected_at: datetime
    reason: str  # "sequence" | "cell-sequence" | "silent"
    from_sequence: int | None = None
    to_sequence: int | None = None
    sku: str | None = None
    location_id: str | None = None
    healed_at: datetime | None = None
    applied: int = 0  # events applied or cells repaired by the healing
    detail: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({
            "id": self.id, "source": self.source, "at": self.detected_at.isoformat(),
            "reason": self.reason, "from": self.from_sequence, "to": self.to_sequence,
            "sku": self.sku, "loc": self.location_id,
            "healed": self.healed_at.isoformat() if self.healed_at else None,
            "applied": self.applied, "detail": self.detail})

    @classmethod
    def decode(cls, raw: bytes) -> Gap:
        d = orjson.loads(raw)
        return cls(id=d["id"], source=d["source"], detected_at=datetime.fromisoformat(d["at"]),
                   reason=d["reason"], from_sequence=d["from"], to_sequence=d["to"],
                   sku=d["sku"], location_id=d["loc"],
                   healed_at=datetime.fromisoformat(d["healed"]) if d["healed"] else None,
                   applied=int(d["applied"]), detail=d.get("detail", ""))


@dataclass(frozen=True, slots=True)
class SourceStatus:
    source: str
    system: str
    last_received_at: datetime | None
    last_occurred_at: datetime | None
    events_total: int
    events_per_minute: float
    lag_received: Lag
    lag_applied: Lag
    rejects: dict[str, int]
    dead_letters: int
    gaps_detected: int
    gaps_healed: int
    recent_gaps: list[Gap]
    heartbeat_seconds: float | None
    silent_seconds: float | None
    open_sequence_gap: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


__all__ = ["GAPS_KEPT", "Gap", "Lag", "SourceStatus"]
