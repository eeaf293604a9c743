"""Every Redis key retailgraph uses (``rg:*``), in one place.

Keys that a Lua script touches together share a hash tag (``{...}``), so each script runs on
one slot (one node of a Cluster):

- ``{s:<sku>}``: one SKU's cache entries: ``views:<source>`` (a hash per SKU and backend: per
  location ``<loc>/<quantity>``, ``<loc>/<quantity>#v`` its source version, ``<loc>/_as_of``,
  ``<loc>/_full``, and ``_gen`` bumped by every event), ``master`` (field ``item``: the item
  master record) and ``hist:<source>:<loc>`` (the cell's recent on-hand changes). The
  reservations' records live next to the cells they hold stock of (the hash tag is the SKU's,
  not the cell's, so one script reads the system of record's cell and writes the hold):
  ``holds`` (units held by reservations per location, field ``h:<loc>``; units committed and
  not yet seen in the system of record, ``p:<loc>``; the ids of those committed reservations,
  ``c:<loc>``, space-separated) and ``rsv`` (the reservation records, field ``<id>``: JSON).
- ``{rsv}``: shared by all reservations: ``idem:<digest>`` (an idempotency key's claim: the
  request it was first used for and the cell it is bound to), ``due`` (reservation ids by when
  a sweeper must look at them next: publish check, expiry, deletion after the retention) and
  ``index`` (reservation ids by creation time, ``Query.reservations``).
- ``{rc}``: the response cache: ``r:<digest>`` (a response), ``t:<tag>`` (the responses of a
  tag), ``tv:<tag>`` (the invalidation sequence a tag was last invalidated at), ``seq``.
- ``{ev}``: the event log and the change stream: ``log``, ``pending``, ``dlq``,
  ``dedupe:<source>:<id>``, ``once:<source>:<event>:<sku>:<loc>``, ``dlqseen:<source>:<id>``,
  ``changes`` (+ ``changes:sku:<sku>``, ``changes:loc:<loc>``, ``changes:indexed``),
  ``last``, ``pub:<entry>``.
- ``{disc}``: discrepancies: ``items``, ``order``, ``feed``, ``lock``, ``last-run``.
- ``{sync}``: sync health: ``<kind>:<source>``, ``lock``.
- ``{out}``: the sync outbox (resolvers/store/outbox.py): ``seq``, ``a:<id>`` (an action),
  ``all`` (the audit trail), ``q:<cell>`` (a cell's unfinished actions), ``due``,
  ``chk:<cell>`` (a drift check), ``c:<cell>`` (the cell's last write), ``lease:<cell>``,
  ``once:<entry>:<cell>``, ``paused``, ``dlq``, ``lat:<target>``, ``n:<target>``, ``feed``.
- ``rg:rl:<client>`` (rate-limit buckets) and ``rg:apq:<sha256>`` (persisted queries).
"""

from __future__ import annotations

PREFIX = "rg:"
PATTERN = "rg:*"  # every key of the gateway (the demo clears them)

# -- the stock and item-master cache ({s:<sku>}) -----------------------------------------------


def views_key(sku: str, source: str) -> str:
    return f"rg:{{s:{sku}}}:views:{source}"


def master_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:master"


def history_key(sku: str, source: str, location_id: str) -> str:
    return f"rg:{{s:{sku}}}:hist:{source}:{location_id}"


# -- reservations ({s:<sku>} next to the cells, {rsv} shared) ---------------------------------


def holds_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:holds"


def reservations_key(sku: str) -> str:
    return f"rg:{{s:{sku}}}:rsv"


def claim_key(digest: str) -> str:
    return f"rg:{{rsv}}:idem:{digest}"


RESERVATIONS_DUE = "rg:{rsv}:due"
RESERVATIONS_INDEX = "rg:{rsv}:index"


# -- the response cache ({rc}) -------------------------------------------------------------------

RESPONSE_SEQ_KEY = "rg:{rc}:seq"
# Lua scripts append the tag to these prefixes.
RESPONSE_TAG_VERSION_PREFIX = "rg:{rc}:tv:"
RESPONSE_TAG_SET_PREFIX = "rg:{rc}:t:"


def response_key(digest: str) -> str:
    return f"rg:{{rc}}:r:{digest}"


def response_tag_version_key(tag: str) -> str:
    return RESPONSE_TAG_VERSION_PREFIX + tag


# A tag invalidated after every request has started: a response holding it is never stored
# (discrepancies and sync status change without an event on any SKU a response shows).
VOLATILE_TAG = "volatile"


# -- the event log and the change stream ({ev}) --------------------------------------------------

LOG_KEY = "rg:{ev}:log"
DLQ_KEY = "rg:{ev}:dlq"
PENDING_KEY = "rg:{ev}:pending"
CHANGES_KEY = "rg:{ev}:changes"
LAST_KEY = "rg:{ev}:last"
INDEXED_KEY = "rg:{ev}:changes:indexed"  # the first change id that was indexed


def dedupe_key(source: str, dedupe_id: str) -> str:
    return f"rg:{{ev}}:dedupe:{source}:{dedupe_id}"


def once_key(source: str, source_event_id: str, sku: str, location_id: str) -> str:
    return f"rg:{{ev}}:once:{source}:{source_event_id}:{sku}:{location_id}"


def dead_letter_seen_key(source: str, dedupe_id: str) -> str:
    return f"rg:{{ev}}:dlqseen:{source}:{dedupe_id}"


def published_key(entry_id: str) -> str:
    return f"rg:{{ev}}:pub:{entry_id}"


def sku_index_key(sku: str) -> str:
    return f"rg:{{ev}}:changes:sku:{sku}"


def location_index_key(location_id: str) -> str:
    return f"rg:{{ev}}:changes:loc:{location_id}"


# -- discrepancies ({disc}) ----------------------------------------------------------------------

DISCREPANCY_ITEMS_KEY = "rg:{disc}:items"
DISCREPANCY_ORDER_KEY = "rg:{disc}:order"
DISCREPANCY_FEED_KEY = "rg:{disc}:feed"
RECONCILE_LOCK_KEY = "rg:{disc}:lock"
RECONCILE_LAST_RUN_KEY = "rg:{disc}:last-run"

# -- sync health ({sync}) ------------------------------------------------------------------------

SYNC_LOCK_KEY = "rg:{sync}:lock"


def sync_key(kind: str, source: str) -> str:
    return f"rg:{{sync}}:{kind}:{source}"


# -- per-request protections ---------------------------------------------------------------------

RATE_LIMIT_PREFIX = "rg:rl:"
PERSISTED_QUERY_PREFIX = "rg:apq:"


# -- the sync outbox ({out}) ---------------------------------------------------------------------

# Lua scripts append ids and cells to this prefix (every outbox key shares the hash tag).
OUTBOX_PREFIX = "rg:{out}:"
OUTBOX_SEQ_KEY = OUTBOX_PREFIX + "seq"
OUTBOX_ALL_KEY = OUTBOX_PREFIX + "all"
OUTBOX_DUE_KEY = OUTBOX_PREFIX + "due"
OUTBOX_PAUSED_KEY = OUTBOX_PREFIX + "paused"
OUTBOX_DLQ_KEY = OUTBOX_PREFIX + "dlq"
OUTBOX_FEED_KEY = OUTBOX_PREFIX + "feed"


def outbox_key(kind: str, name: str) -> str:
    """``a:<action id>``, ``q:<cell>``, ``chk:<cell>``, ``c:<cell>``, ``lease:<cell>``,
    ``once:<entry>:<cell>``, ``lat:<target>``, ``n:<target>``."""
    return f"{OUTBOX_PREFIX}{kind}:{name}"
