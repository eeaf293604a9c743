"""The store's Redis key layout, in one place.

Every key of one SKU carries the hash tag ``{s:<sku>}``, so a script touching several of
them runs on one slot (one node of a Cluster). The reservation scripts read the system of
record's cell from the event cache's views hash and write the holds next to it, atomically:
the hash tag is the SKU's, not the cell's, for exactly that reason.

Per SKU:

- ``rg:{s:<sku>}:views:<source>``: the event cache's cells of one backend (gateway/cache.py).
- ``rg:{s:<sku>}:master``: the item master record.
- ``rg:{s:<sku>}:holds``: units held by reservations per location (field ``h:<loc>``), units
  committed and not yet seen in the system of record (``p:<loc>``), and the ids of those
  committed reservations (``c:<loc>``, space-separated).
- ``rg:{s:<sku>}:rsv``: the reservation records (field ``<id>``: JSON).

Shared by all reservations (hash tag ``{rsv}``):

- ``rg:{rsv}:idem:<digest>``: an idempotency key's claim: the request it was first used for
  and the cell it is bound to.
- ``rg:{rsv}:due``: sorted set of reservation ids by when a sweeper must look at them next
  (publish check, expiry, deletion after the retention).
- ``rg:{rsv}:index``: sorted set of reservation ids by creation time (``Query.reservations``).
"""

from __future__ import annotations


def views_key(sku: str, source: str) -> str:
    return f"rg:{{s:{sku}}}:views:{source}"


def master_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:master"


def holds_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:holds"


def reservations_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:rsv"


def claim_key(digest: str) -> str:
    return f"rg:{{rsv}}:idem:{digest}"


RESERVATIONS_DUE = "rg:{rsv}:due"
RESERVATIONS_INDEX = "rg:{rsv}:index"
