"""Identity resolution: every system's identifiers to one SKU and one location id.

Learned from the systems' own catalogs (the ERP item and location masters with their
cross-references, the e-commerce variants, the POS catalog), plus an optional mapping file
for what no catalog links. Never guesses: an identifier that maps to nothing, or to two
different things, is recorded in :attr:`IdentityMap.unmapped` and reported through the API.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field

from resolvers.types import (
    LocationRecord,
    MasterItem,
    NativeLocation,
    OnlineListing,
    StoreListing,
    UnmappedIdentifier,
)

# Kinds of SKU identifier, as (namespace, kind).
ERP_ITEM = ("erp", "item_number")
GTIN = ("gs1", "gtin")
SHOPIFY_INVENTORY_ITEM = ("shopify", "inventory_item_id")
SHOPIFY_VARIANT = ("shopify", "variant_id")
SQUARE_VARIATION = ("square", "catalog_object_id")
# Kinds of location identifier.
GLN = ("gs1", "gln")
SQUARE_LOCATION = ("square", "location_id")
SHOPIFY_LOCATION = ("shopify", "location_id")

Kind = tuple[str, str]

# Global object ids (Relay): every type but Location (whose id is its ERP location code) has
# base64("<TypeName>:<key>"), as graphql-relay's toGlobalId and strawberry.relay encode them.
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def node_id(type_name: str, key: str) -> str:
    """The global id of the ``type_name`` object with ``key``."""
    return base64.b64encode(f"{type_name}:{key}".encode()).decode("ascii")


def parse_node_id(value: str) -> tuple[str, str] | None:
    """``(type name, key)`` of a global id made by :func:`node_id`; None for anything else
    (a location code, a malformed or non-canonical id)."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True).decode()
    except (binascii.Error, UnicodeError):
        return None
    type_name, colon, key = raw.partition(":")
    if not colon or not _TYPE_NAME.match(type_name) or node_id(type_name, key) != value:
        return None
    return type_name, key


def normalize_gtin(value: str) -> str | None:
    """A GTIN-8/12/13/14 (or an EPC class/pattern URN) as 14 digits, or None if invalid."""
    value = value.strip()
    if value.startswith("urn:epc:"):
        value = gtin_from_epc(value) or ""
    if not value.isdigit() or len(value) not in (8, 12, 13, 14):
        return None
    digits = value.zfill(14)
    body, check = digits[:-1], digits[-1]
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return digits if str((10 - total % 10) % 10) == check else None


def gtin_from_epc(urn: str) -> str | None:
    """GTIN-14 from ``urn:epc:idpat:sgtin:CP.IR.*``, ``urn:epc:class:lgtin:CP.IR.LOT`` or
    ``urn:epc:id:sgtin:CP.IR.SERIAL`` (indicator digit leads the item reference)."""
    for prefix in ("urn:epc:idpat:sgtin:", "urn:epc:class:lgtin:", "urn:epc:id:sgtin:"):
        if urn.startswith(prefix):
            parts = urn.removeprefix(prefix).split(".")
            if len(parts) < 2 or not (parts[0] + parts[1]).isdigit():
                return None
            company, item_ref = parts[0], parts[1]
            body = item_ref[:1] + company + item_ref[1:]
            if len(body) != 13:
                return None
            total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
            return body + str((10 - total % 10) % 10)
    return None


def gln_from_sgln(urn: str) -> str | None:
    """13-digit GLN from ``urn:epc:id:sgln:CompanyPrefix.LocationRef.Extension``."""
    if not urn.startswith("urn:epc:id:sgln:"):
        return None
    parts = urn.removeprefix("urn:epc:id:sgln:").split(".")
    if len(parts) < 2 or not (parts[0] + parts[1]).isdigit() or len(parts[0] + parts[1]) != 12:
        return None
    body = parts[0] + parts[1]
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


@dataclass(slots=True)
class _Index:
    forward: dict[tuple[str, str, str], str] = field(default_factory=dict)
    reverse: dict[tuple[str, str, str], str] = field(default_factory=dict)


class IdentityMap:
    """Bidirectional index of native identifiers to unified SKUs and location ids."""

    def __init__(self) -> None:
        self._skus = _Index()
        self._locations = _Index()
        self.unmapped: dict[tuple[str, str, str], UnmappedIdentifier] = {}
        self.known_skus: set[str] = set()
        self.known_locations: set[str] = set()

    # -- learning ------------------------------------------------------------------------------

    def _add(self, index: _Index, kind: Kind, value: str, unified: str, what: str) -> None:
        key = (*kind, value)
        existing = index.forward.get(key)
        if existing is not None and existing != unified:
            self.report(kind, value, f"claimed by {what}s {existing} and {unified}")
            return
        index.forward[key] = unified
        index.reverse.setdefault((*kind, unified), value)

    def add_sku(self, kind: Kind, value: str, sku: str) -> None:
        self._add(self._skus, kind, value, sku, "SKU")

    def add_location(self, kind: Kind, value: str, location_id: str) -> None:
        self._add(self._locations, kind, value, location_id, "location")

    def report(self, kind: Kind, value: str, reason: str, seen_in: str = "") -> None:
        key = (*kind, value)
        if key not in self.unmapped:
            self.unmapped[key] = UnmappedIdentifier(kind[0], kind[1], value, reason, seen_in)

    # -- lookups ---------------------------------------------------------------------------------

    def sku(self, kind: Kind, value: str, seen_in: str = "") -> str | None:
        """The SKU for a native identifier, recording it as unmapped when there is none."""
        found = self._skus.forward.get((*kind, value))
        if found is None:
            self.report(kind, value, "no SKU has this identifier", seen_in)
        return found

    def location(self, kind: Kind, value: str, seen_in: str = "") -> str | None:
        found = self._locations.forward.get((*kind, value))
        if found is None:
            self.report(kind, value, "no location has this identifier", seen_in)
        return found

    def native_sku(self, kind: Kind, sku: str) -> str | None:
        return self._skus.reverse.get((*kind, sku))

    def native_location(self, kind: Kind, location_id: str) -> str | None:
        return self._locations.reverse.get((*kind, location_id))

    # -- building --------------------------------------------------------------------------------

    def learn_master(self, items: Iterable[MasterItem],
                     locations: Iterable[LocationRecord]) -> None:
        for item in items:
            self.known_skus.add(item.sku)
            self.add_sku(ERP_ITEM, item.item_number, item.sku)
            if item.gtin14:
                self.add_sku(GTIN, item.gtin14, item.sku)
        for loc in locations:
            self.known_locations.add(loc.id)
            if loc.gln:
                self.add_location(GLN, loc.gln, loc.id)
            for ref in loc.refs:
                self.add_location((ref.namespace, ref.kind), ref.value, loc.id)

    def learn_online(self, listings: Iterable[OnlineListing]) -> None:
        for listing in listings:
            sku = (self._known_sku(listing.sku, listing.barcode)
                   or self._mapped(SHOPIFY_INVENTORY_ITEM, listing.inventory_item_id)
                   or self._mapped(SHOPIFY_VARIANT, listing.variant_id))
            if sku is None:
                self.report(SHOPIFY_VARIANT, listing.variant_id,
                            f"variant SKU {listing.sku!r} is not in the item master", "commerce")
                continue
            self.add_sku(SHOPIFY_INVENTORY_ITEM, listing.inventory_item_id, sku)
            self.add_sku(SHOPIFY_VARIANT, listing.variant_id, sku)

    def learn_store(self, listings: Iterable[StoreListing]) -> None:
        for listing in listings:
            sku = (self._known_sku(listing.sku, listing.upc)
                   or self._mapped(SQUARE_VARIATION, listing.catalog_object_id))
            if sku is None:
                self.report(SQUARE_VARIATION, listing.catalog_object_id,
                            f"variation SKU {listing.sku!r} / UPC {listing.upc!r} is not in "
                            "the item master", "pos")
                continue
            self.add_sku(SQUARE_VARIATION, listing.catalog_object_id, sku)

    def check_locations(self, natives: Iterable[NativeLocation]) -> None:
        """Report native locations that no ERP cross-reference or mapping file names."""
        for native in natives:
            kind = (native.namespace, "location_id")
            # EPCIS names locations by GS1 identifiers: a WMS site's native id is its GLN.
            kinds = [kind, GLN] if native.namespace == "epcis" else [kind]
            if all((*k, native.native_id) not in self._locations.forward for k in kinds):
                self.report(kind, native.native_id, "no location has this identifier",
                            native.name)

    def _mapped(self, kind: Kind, value: str) -> str | None:
        """The SKU a mapping file (or an earlier catalog) gave this identifier, if any."""
        return self._skus.forward.get((*kind, value))

    def _known_sku(self, sku: str | None, barcode: str | None) -> str | None:
        if sku and sku in self.known_skus:
            return sku
        gtin = normalize_gtin(barcode) if barcode else None
        return self._skus.forward.get((*GTIN, gtin)) if gtin else None

    def load_mapping_file(self, path: str) -> None:
        """TOML: ``[skus] "shopify:inventory_item_id:123" = "SKU-1"``; ``[locations]`` alike."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        for section, add in (("skus", self.add_sku), ("locations", self.add_location)):
            for key, unified in data.get(section, {}).items():
                namespace, kind, value = key.split(":", 2)
                add((namespace, kind), value, unified)
                self.unmapped.pop((namespace, kind, value), None)
