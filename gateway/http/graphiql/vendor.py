"""Re-vendor the GraphiQL page's browser assets: ``python -m gateway.http.graphiql.vendor``.

``static/manifest.json`` is the list: for each npm package its pinned version, the tarball's
``integrity`` (npm's SHA-512) and which files of the tarball go where. This script fetches
each tarball with ``npm pack`` (npm's own client, so the registry npm is set up for), refuses
a tarball whose integrity differs from the recorded one, copies the listed files into
``static/`` and records each file's SHA-256 (which ``tests/e2e/test_browser.py`` checks).

To move to another version: change ``version`` in the manifest and run with ``--update``,
which accepts and records the new tarball's integrity. Without ``--update`` a run is a check
that the vendored files are exactly the pinned tarballs' (it rewrites them byte for byte).

A development tool: it runs outside the gateway, with blocking I/O.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"
MANIFEST = STATIC / "manifest.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
    return manifest


def _pack(spec: str, into: Path) -> tuple[Path, str]:
    """``npm pack SPEC``: the tarball's path and npm's integrity string."""
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(into)],
                         check=True, capture_output=True, text=True, cwd=into).stdout
    info = json.loads(out)[0]
    return into / info["filename"], str(info["integrity"])


def vendor(update: bool = False) -> list[str]:
    """Fetch, check and copy every listed file; returns what it wrote."""
    manifest = read_manifest()
    written: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, package in manifest["packages"].items():
            spec = f"{name}@{package['version']}"
            tarball, integrity = _pack(spec, Path(tmp))
            if package.get("integrity") and package["integrity"] != integrity and not update:
                raise SystemExit(f"{spec}: the registry's tarball has integrity {integrity}, "
                                 f"the manifest records {package['integrity']} (--update "
                                 "accepts the new one)")
            package["integrity"] = integrity
            with tarfile.open(tarball) as archive:
                for dest, entry in package["files"].items():
                    member = archive.extractfile(entry["from"])
                    if member is None:
                        raise SystemExit(f"{spec}: {entry['from']} is not a file")
                    target = STATIC / dest
                    target.write_bytes(member.read())
                    entry["sha256"] = sha256(target)
                    written.append(dest)
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.http.graphiql.vendor",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="accept a changed tarball integrity (after changing a version)")
    args = parser.parse_args(argv)
    for dest in vendor(update=args.update):
        print(f"vendored {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
