"""Each vendor's webhook payload, turned into canonical :class:`~gateway.events.log.Envelope` s.

Raises :class:`Malformed` (the sender gets 400 naming the problem; nothing is recorded) or
:class:`Unappliable` (the delivery is kept in the dead-letter stream with the reason and
acknowledged, so the sender stops retrying and an operator can replay it after fixing the
mapping). The payload's signature has been verified before anything here runs.

What is accepted can always be served, and nothing pins a cell:

- every quantity must fit GraphQL's 32-bit ``Int`` (``resolvers.types.INT_MAX``) and every
  sequence number 2**53 - 1; a delivery holding a larger one is dead-lettered, naming it;
- a version (what decides which event wins) comes only from signed content, and no
  timestamp may lie more than ``max_clock_skew_seconds`` ahead of the gateway's clock (it
  would outrank every genuine event after it): such a delivery is dead-lettered too. A
  Shopify level without ``updated_at`` is ordered by the time the gateway received it (the
  ``X-Shopify-Triggered-At`` header is not signed).
"""

from __future__ import annotations

from gateway.intake.normalize.base import Delivery, Malformed, Normalizer, Unappliable
from gateway.intake.normalize.epcis import EPCIS_MOVEMENTS, epcis
from gateway.intake.normalize.erp import erp
from gateway.intake.normalize.shopify import shopify
from gateway.intake.normalize.square import SQUARE_MOVEMENTS, square

NORMALIZERS: dict[str, Normalizer] = {"square": square, "shopify": shopify, "epcis": epcis,
                                      "erp": erp}

__all__ = ["EPCIS_MOVEMENTS", "NORMALIZERS", "SQUARE_MOVEMENTS", "Delivery", "Malformed",
           "Normalizer", "Unappliable", "epcis", "erp", "shopify", "square"]
