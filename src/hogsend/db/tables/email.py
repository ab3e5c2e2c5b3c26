"""Email: every send attempt with its decision, preferences, suppressions, tracking, dev outbox."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

SEND_STATUSES = (
    "queued",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "failed",
    "skipped",
)
SEND_DECISIONS = (
    "sent",
    "duplicate",
    "skipped_deleted",
    "suppressed",
    "unsubscribed",
    "capped",
    "deferred",
    "redirected",
    "provider_error",
    "queued",
)
# Decisions taken by a gate before the provider: the message never left.
GATE_DECISIONS = (
    "duplicate",
    "skipped_deleted",
    "suppressed",
    "unsubscribed",
    "capped",
    "deferred",
)
SUPPRESSION_REASONS = ("hard_bounce", "soft_bounce", "complaint", "manual", "import")
# Who sent it, which decides the gates: transactional and test sends are exempt from
# unsubscribes and the frequency cap, and the cap does not count them.
SEND_KINDS = ("transactional", "journey", "campaign", "test")


class EmailSend(Timestamps, Base):
    """One send attempt and the mailer's decision about it: the send-decision log.

    Every attempt writes exactly one row, whether a gate stopped it (``status`` =
    ``skipped``) or it went to the provider; see docs/decisions/0001-schema.md.
    """

    __tablename__ = "email_sends"

    id: Mapped[uuid.UUID] = uuid_pk()
    # No foreign key: merges rewrite it; NULL for an address that has no contact.
    contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str | None] = mapped_column(Text)
    user_email: Mapped[str | None] = mapped_column(Text)
    # SET NULL (the reference had NO ACTION): deleting a run must never fail a merge.
    journey_state_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("journey_states.id", ondelete="SET NULL")
    )
    journey_id: Mapped[str | None] = mapped_column(Text)
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    template_key: Mapped[str | None] = mapped_column(Text, index=True)
    category: Mapped[str | None] = mapped_column(Text)
    from_email: Mapped[str] = mapped_column(Text)
    to_email: Mapped[str] = mapped_column(Text)
    # Test mode: where the message really went (NULL when it went to the dev outbox).
    redirected_to: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    decision: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    # Facts behind the decision: the cap that hit, the window deferred to, the provider error ...
    decision_detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    duplicate_of_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="SET NULL")
    )
    # Held only by the attempt that went (or is going) out; released on provider error.
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    # Not indexed (the outcome update would then never stay on its page): delivery
    # reports find the send through ``email_send_messages`` (migration 0015).
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    complained_at: Mapped[datetime | None]
    open_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    click_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    bounce_type: Mapped[str | None] = mapped_column(Text)
    bounce_reason: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default=text("'transactional'"))
    # A send decided now and delivered by a worker: what the worker needs to render and
    # send it. Set only while the row is ``queued``; cleared when the outcome is recorded.
    handoff: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        Index(
            "uq_email_sends_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Every send writes each index on insert, and again on an outcome update that
        # cannot stay on its page: only indexes a query uses (migration 0014, and
        # docs/database.md "email_sends indexes"). The frequency cap counts recent sends
        # by lower-cased address (the mailer's facts query, every attempt).
        Index("ix_email_sends_lower_to_email_created_at", func.lower(to_email), "created_at"),
        Index("ix_email_sends_contact_id_created_at", "contact_id", "created_at"),
        Index("ix_email_sends_created_at", "created_at"),
        # Looked up by value only (funnels, ON DELETE SET NULL): rows without one stay out.
        Index(
            "ix_email_sends_journey_state_id",
            "journey_state_id",
            postgresql_where=text("journey_state_id IS NOT NULL"),
        ),
        Index(
            "ix_email_sends_campaign_id",
            "campaign_id",
            postgresql_where=text("campaign_id IS NOT NULL"),
        ),
        # The worker's queue of handed-off sends, oldest first.
        Index(
            "ix_email_sends_handoff",
            "created_at",
            postgresql_where=text("handoff IS NOT NULL"),
        ),
        CheckConstraint(
            "status IN ('queued','sent','delivered','opened','clicked','bounced','complained',"
            "'failed','skipped')",
            name="status_known",
        ),
        CheckConstraint(
            "decision IN ('sent','duplicate','skipped_deleted','suppressed','unsubscribed',"
            "'capped','deferred','redirected','provider_error','queued')",
            name="decision_known",
        ),
        CheckConstraint(
            "(status = 'skipped') = (decision IN ('duplicate','skipped_deleted','suppressed',"
            "'unsubscribed','capped','deferred'))",
            name="skipped_iff_gated",
        ),
        CheckConstraint(
            "idempotency_key IS NULL OR decision IN ('queued','sent','redirected')",
            name="key_held_by_outgoing",
        ),
        CheckConstraint(
            "kind IN ('transactional','journey','campaign','test')",
            name="kind_known",
        ),
        CheckConstraint("handoff IS NULL OR decision = 'queued'", name="handoff_only_queued"),
        # Room on each page for the outcome update (it changes no indexed column) to stay
        # there: a round of outcomes, each row grown by its detail, in one statement
        # (migration 0018; at 90, 42% of a campaign's outcomes left their page).
        {"postgresql_with": {"fillfactor": 50}},
    )


class EmailPreference(Timestamps, Base):
    """A contact's global email choice; per-list choices live in ``list_subscriptions``."""

    __tablename__ = "email_preferences"

    contact_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    unsubscribed_all: Mapped[bool] = mapped_column(server_default=text("false"))
    unsubscribed_at: Mapped[datetime | None]
    resubscribed_at: Mapped[datetime | None]
    # preference_center, one_click, api, admin, import, merge ...
    source: Mapped[str | None] = mapped_column(Text)


class EmailSuppression(Timestamps, Base):
    """Health of one email address, keyed on the address itself (not on a contact).

    A row exists as soon as the address bounces or complains, so soft bounces are counted
    even for addresses nobody has a preference row for; ``suppressed`` blocks every send.
    """

    __tablename__ = "email_suppressions"

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(Text)
    suppressed: Mapped[bool] = mapped_column(server_default=text("false"))
    reason: Mapped[str | None] = mapped_column(Text)
    suppressed_at: Mapped[datetime | None]
    bounce_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_bounce_at: Mapped[datetime | None]
    last_bounce_type: Mapped[str | None] = mapped_column(Text)
    # Soft bounces since the last delivery or unsuppress; the threshold suppresses on it.
    soft_bounce_streak: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    complaint_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_complaint_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("uq_email_suppressions_email", func.lower(email), unique=True),
        Index(
            "ix_email_suppressions_suppressed_at",
            "suppressed_at",
            postgresql_where=text("suppressed"),
        ),
        CheckConstraint(
            "reason IS NULL"
            " OR reason IN ('hard_bounce','soft_bounce','complaint','manual','import')",
            name="reason_known",
        ),
        CheckConstraint(
            "NOT suppressed OR (reason IS NOT NULL AND suppressed_at IS NOT NULL)",
            name="suppressed_has_reason",
        ),
    )


class EmailSendMessage(Base):
    """The send a provider's message id belongs to: what delivery reports look sends up by.

    Written with the outcome that records the id on ``email_sends``. Its own narrow table
    so that outcome update changes no indexed column of ``email_sends`` and stays on the
    row's page (migration 0015). No foreign key: the only sends ever deleted (attempts that
    never reached a provider) have no message id, and a cascade would need one more index
    for every send to write. ``provider`` is '' for an id stored without one.
    """

    __tablename__ = "email_send_messages"

    # First: a report that names no provider looks the id up alone.
    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    provider: Mapped[str] = mapped_column(Text, primary_key=True)
    email_send_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class EmailSendMark(Base):
    """A ``queued`` attempt a batch decided ahead of its provider call: not sent yet.

    Written with the decision row and deleted in the commit before the provider call
    (``hogsend.db.repos.sends.insert_attempts``); an attempt that takes over the key after a
    crash removes a still-marked row instead of closing it as interrupted. A narrow row
    of its own rather than a key in ``email_sends.decision_detail``: taking it off was a
    second update of the wide row per send, with a new entry in each of its indexes
    whenever the update could not stay on its page (migration 0015).
    """

    __tablename__ = "email_send_marks"

    # No foreign key: the mark lives for one provider call, and a check per send costs.
    email_send_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class WebhookReceipt(Base):
    """One provider webhook delivery that was acted on, so a redelivery changes nothing.

    Keyed on the delivery id the provider signs (Svix's ``svix-id``): a replay of the
    same delivery finds its row and is answered without touching anything. Reports that
    are ignored (opens, clicks) leave no row.
    """

    __tablename__ = "webhook_receipts"

    source: Mapped[str] = mapped_column(Text, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(Text, primary_key=True)
    event_type: Mapped[str] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    email_send_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="SET NULL")
    )
    received_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class TrackedLinkSet(Base):
    """The tracked URLs of a message in order, stored once for every message that has them.

    Content-addressed: ``id`` is the first 16 bytes of SHA-256 over the URLs
    (``hogsend.core.tracking.link_set``), so a campaign's messages, or a template's
    with the same links, share one row. A click token signs (send id, set id, link
    number), so a click goes only to ``urls[number]`` and is counted on its own send
    (migration 0017). Nothing deletes a set: any message may still carry it.
    """

    __tablename__ = "tracked_link_sets"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    urls: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class TrackedLink(Timestamps, Base):
    """One http(s) URL of one message sent before migration 0017 (now: link sets).

    Kept so that the click tokens of those messages (which name these rows) still
    redirect and count. No foreign key to ``email_sends`` (migration 0016); the one
    statement that deletes sends (``sends.abandon``, attempts that never reached a
    provider) deletes their links with them.
    """

    __tablename__ = "tracked_links"

    id: Mapped[uuid.UUID] = uuid_pk()
    email_send_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    original_url: Mapped[str] = mapped_column(Text)
    click_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    first_clicked_at: Mapped[datetime | None]


class LinkClick(Base):
    """One hit on a tracked link, flagged when it looks like a scanner rather than a person.

    The link is link ``link_number`` of the set ``link_set_id`` (the URL:
    ``tracked_link_sets.urls[link_number + 1]``), or for a message sent before migration
    0017 its ``tracked_links`` row: exactly one of the two.
    """

    __tablename__ = "link_clicks"
    __table_args__ = (
        CheckConstraint(
            "(tracked_link_id IS NULL) = (link_set_id IS NOT NULL)"
            " AND (link_set_id IS NULL) = (link_number IS NULL)",
            name="link",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tracked_link_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tracked_links.id", ondelete="CASCADE"), index=True
    )
    # No foreign key: sets are never deleted, and a check per click buys nothing.
    link_set_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    link_number: Mapped[int | None] = mapped_column(Integer)
    email_send_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="CASCADE"), index=True
    )
    ip_address: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    is_bot: Mapped[bool] = mapped_column(server_default=text("false"))
    bot_reason: Mapped[str | None] = mapped_column(Text)
    clicked_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


class OutboxMessage(Base):
    """A message "sent" by the dev outbox provider: stored whole, shown in Studio."""

    __tablename__ = "outbox_messages"

    id: Mapped[uuid.UUID] = uuid_pk()
    email_send_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="SET NULL"), index=True
    )
    to_email: Mapped[str] = mapped_column(Text)
    from_email: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    html: Mapped[str | None] = mapped_column(Text)
    # Declared after every use of sqlalchemy's ``text()`` in this class body: it shadows it.
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)

    __table_args__ = (Index("ix_outbox_messages_to_email", "to_email"),)


class EmailOpen(Base):
    """One hit on a message's open pixel, flagged when it looks like a scanner or a HEAD probe."""

    __tablename__ = "email_opens"

    id: Mapped[uuid.UUID] = uuid_pk()
    email_send_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="CASCADE"), index=True
    )
    ip_address: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    is_bot: Mapped[bool] = mapped_column(server_default=text("false"))
    bot_reason: Mapped[str | None] = mapped_column(Text)
    # The image proxy that fetched it for a person (google, yahoo), when one is known.
    proxy: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)


DEFERRED_STATUSES = ("pending", "done", "failed")


class DeferredSend(Timestamps, Base):
    """A send the mailer deferred to its send window's opening, kept until it is sent again.

    Written in the transaction of the ``deferred`` decision row, so a deferred send is
    never lost; the worker's deferred-send sweep (hogsend.runtime.deferred) hands it back
    to the mailer once ``due_at`` passes. Senders that wait and retry themselves (durable
    journeys) leave no row here.
    """

    __tablename__ = "deferred_sends"

    id: Mapped[uuid.UUID] = uuid_pk()
    # The attempt that was deferred; its row stays ``deferred`` (one row per attempt).
    email_send_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("email_sends.id", ondelete="CASCADE"),
        unique=True,
    )
    due_at: Mapped[datetime]
    # The SendRequest to make again (hogsend.channels.mailer.request_record).
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    # Sweep rounds that failed before reaching a decision (database down, bad template).
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The attempt the sweep made, and its decision (sent, unsubscribed, deferred again ...).
    resent_send_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("email_sends.id", ondelete="SET NULL")
    )
    resent_decision: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_deferred_sends_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
        ),
        CheckConstraint("status IN ('pending','done','failed')", name="status_known"),
    )
