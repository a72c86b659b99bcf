"""A released migration is never edited: databases already migrated past it would never see the
change (a released migration was once edited in place; db/legacy_migrations keeps the copies that
proved it). The manifest holds the sha256 of every released migration file."""

import hashlib
from pathlib import Path

import q50_assets.db

VERSIONS = Path(q50_assets.db.__file__).resolve().parent / "migrations" / "versions"
MANIFEST = Path(__file__).resolve().parent / "released_migrations.sha256"
MESSAGE = "released migrations are never edited; add a new one"


def released() -> dict[str, str]:
    out = {}
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            out[name] = digest
    return out


def test_released_migrations_are_unchanged():
    manifest = released()
    assert manifest, f"{MANIFEST} lists no migration"
    changed = {name: digest for name, digest in manifest.items()
               if not (VERSIONS / name).exists()
               or hashlib.sha256((VERSIONS / name).read_bytes()).hexdigest() != digest}
    assert not changed, f"{MESSAGE}: {sorted(changed)} changed or removed"


def test_every_migration_in_the_folder_before_the_newest_released_is_in_the_manifest():
    # A file slipped in among the released ones (not after them) would be a rewrite of history too.
    manifest = released()
    newest = max(manifest)
    unlisted = sorted(p.name for p in VERSIONS.glob("*.py") if p.name not in manifest and p.name < newest)
    assert not unlisted, f"{MESSAGE}: {unlisted} sit among the released migrations"
