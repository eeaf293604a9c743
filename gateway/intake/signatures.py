"""Webhook signing schemes of the systems we speak to, both directions.

The simulators sign with these functions and the gateway verifies with them, so there is one
definition of each scheme. Verification is constant time and works on the raw body bytes.

- Shopify: ``X-Shopify-Hmac-Sha256 = base64(HMAC-SHA256(secret, body))``.
- Square: ``x-square-hmacsha256-signature = base64(HMAC-SHA256(key, notification_url + body))``.
- Standard Webhooks (https://www.standardwebhooks.com/), used by the WMS and the ERP:
  ``webhook-signature = "v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}"))``;
  several space-separated signatures may be sent during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def _key(secret: str) -> bytes:
    """Standard Webhooks secrets are ``whsec_<base64>``; anything else is used as UTF-8."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def _b64_hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(_key(secret), message, hashlib.sha256).digest()).decode()


def shopify_sign(secret: str, body: bytes) -> str:
    return _b64_hmac(secret, body)


def square_sign(secret: str, notification_url: str, body: bytes) -> str:
    return _b64_hmac(secret, notification_url.encode() + body)


def standard_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return "v1," + _b64_hmac(secret, f"{msg_id}.{timestamp}.".encode() + body)


def _matches(expected: Iterable[str], given: Iterable[str]) -> bool:
    ok = False
    for exp in expected:
        for got in given:
            # Evaluate every pair: timing does not tell which secret or signature matched.
            ok |= hmac.compare_digest(exp.encode(), got.encode())
    return ok


def shopify_verify(secrets: Iterable[str], body: bytes, header: str) -> bool:
    return _matches((shopify_sign(s, body) for s in secrets if s), [header])


def square_verify(secrets: Iterable[str], notification_url: str, body: bytes,
                  header: str) -> bool:
    return _matches((square_sign(s, notification_url, body) for s in secrets if s), [header])


def standard_verify(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes,
                    header: str) -> bool:
    given = [part for part in header.split(" ") if part.startswith("v1,")]
    return _matches((standard_sign(s, msg_id, timestamp, body) for s in secrets if s), given)
