"""Structured logs: one JSON object per line with the trace and span id, secrets removed.

``configure("json")`` (the default of ``retailgraph serve``) or ``configure("text")``. Every
record passes :class:`Redactor`: configured secrets (backend tokens, webhook secrets, the JWT
secret, API keys; see :func:`protect`) and anything shaped like a credential (``Bearer ...``,
JWTs, ``token=...``, webhook signatures) are replaced by ``[REDACTED]`` in the message, its
arguments and any traceback, whichever logger wrote it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import telemetry
from gateway.config import Settings

REDACTED = "[REDACTED]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic|apikey)\s+[A-Za-z0-9._~+/=-]{4,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|token|secret|password|signature|"
                r"authorization|hmac[_-]?sha256)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"),
     rf"\1{REDACTED}"),
    (re.compile(r"\bv1,[A-Za-z0-9+/=]{16,}"), f"v1,{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), REDACTED),
)
_secrets: set[str] = set()
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def protect(values: Iterable[str]) -> None:
    """Never log these strings (shorter ones than 6 characters are too common to scrub)."""
    _secrets.update(v for v in values if v and len(v) >= 6)


def secrets_of(settings: Settings) -> list[str]:
    out = [settings.jwt_secret]
    for backend in settings.backends.values():
        out += [backend.token, backend.webhook_secret, backend.webhook_previous_secret]
    out += [str(entry.get("key", "")) for entry in settings.api_keys.values()
            if isinstance(entry, dict)]
    return [x for x in out if x]


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class Redactor(logging.Filter):
    """Scrubs a record's message and traceback in place (attach it to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "trace_id", "span_id", ...extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = telemetry.trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) \
                    else redact(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = telemetry.trace_ids()
        return f"{line} trace_id={ids[0]}" if ids else line


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Log to stderr in ``fmt`` ("json" or "text"), redacting secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(Redactor())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


__all__ = ["JsonFormatter", "Redactor", "configure", "protect", "redact", "secrets_of"]
