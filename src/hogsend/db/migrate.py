"""Run and inspect hogsend's Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from hogsend.db.engine import make_sync_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migration chain and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` empties the schema)."""
    command.downgrade(alembic_config(url), revision)


def heads() -> list[str]:
    """Head revisions of the packaged chain (exactly one in a healthy package)."""
    return list(ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_heads())


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaStatus:
    """Where a database stands relative to the packaged migrations."""

    applied: str | None
    required: str | None
    pending: list[str]

    @property
    def in_sync(self) -> bool:
        """True when nothing is pending and the database is at the head."""
        return not self.pending and self.applied == self.required


def status_of(connection: Connection) -> SchemaStatus:
    """Compare the database's alembic_version with the packaged head."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    head = script.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    pending: list[str] = []
    if head is not None and current != head:
        for rev in script.iterate_revisions(head, current or "base"):
            if rev.revision != current:
                pending.append(rev.revision)
        pending.reverse()
    return SchemaStatus(applied=current, required=head, pending=pending)


def status(url: str) -> SchemaStatus:
    """:func:`status_of` on a fresh connection to ``url``."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return status_of(conn)
    finally:
        engine.dispose()
