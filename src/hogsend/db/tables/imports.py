"""Contact imports: one job per uploaded file, and the rows it could not import."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

IMPORT_FORMATS = ("csv", "jsonl")
IMPORT_STATUSES = ("pending", "validating", "processing", "completed", "failed", "cancelled")


class ImportJob(Timestamps, Base):
    """One contact import: the file, how its columns map, and its durable progress."""

    __tablename__ = "import_jobs"

    id: Mapped[uuid.UUID] = uuid_pk()
    file_name: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    # Where the uploaded file is kept until the job finishes (every worker must reach it).
    source_uri: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The uploaded file itself (source_uri unset), dropped once the job finishes.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # Column -> field (email, userId, properties.<name>, lists.<id>).
    mapping: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    dry_run: Mapped[bool] = mapped_column(server_default=text("false"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    workflow_id: Mapped[str | None] = mapped_column(Text)
    total_rows: Mapped[int | None] = mapped_column(Integer)
    processed_rows: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed_rows: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_contacts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_contacts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Summary for the API (first errors, counts by reason); every bad row is in import_errors.
    errors: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    # Durable resume position in the file (e.g. byte offset and line number).
    cursor: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_import_jobs_status", "status"),
        Index("ix_import_jobs_created_at", "created_at"),
        CheckConstraint("format IN ('csv','jsonl')", name="format_known"),
        CheckConstraint(
            "status IN ('pending','validating','processing','completed','failed','cancelled')",
            name="status_known",
        ),
    )


class ImportRowError(Base):
    """One line of an import file that was rejected, with the reason and the raw line."""

    __tablename__ = "import_errors"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    import_job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("import_jobs.id", ondelete="CASCADE")
    )
    line_number: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_import_errors_import_job_id_line_number", "import_job_id", "line_number"),
    )
