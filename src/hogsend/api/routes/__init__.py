"""HTTP routes, one module per resource; :func:`include_routes` mounts them all."""

from __future__ import annotations

from fastapi import FastAPI

from hogsend.api.routes import (
    campaigns,
    contacts,
    emails,
    events,
    health,
    lists,
    preferences,
    segment,
    tracking,
    webhooks,
    whoami,
)
from hogsend.api.routes.admin import alerts as admin_alerts
from hogsend.api.routes.admin import api_keys, audit_logs, dead_letters, metrics
from hogsend.api.routes.admin import bucket_backfill as admin_bucket_backfill
from hogsend.api.routes.admin import buckets as admin_buckets
from hogsend.api.routes.admin import contacts as admin_contacts
from hogsend.api.routes.admin import events as admin_events
from hogsend.api.routes.admin import imports as admin_imports
from hogsend.api.routes.admin import journeys as admin_journeys
from hogsend.api.routes.admin import outbox as admin_outbox
from hogsend.api.routes.admin import preferences as admin_preferences
from hogsend.api.routes.admin import reporting as admin_reporting
from hogsend.api.routes.admin import sends as admin_sends
from hogsend.api.routes.admin import suppressions as admin_suppressions
from hogsend.api.routes.admin import templates as admin_templates


def include_routes(api: FastAPI) -> None:
    """Mount every router on ``api``."""
    for router in (
        health.router,
        whoami.router,
        events.router,
        contacts.router,
        segment.router,
        api_keys.router,
        audit_logs.router,
        metrics.router,
        dead_letters.router,
        admin_contacts.router,
        admin_events.router,
        admin_sends.router,
        tracking.router,
        lists.router,
        preferences.router,
        admin_preferences.router,
        webhooks.router,
        admin_suppressions.router,
        emails.router,
        admin_templates.router,
        admin_outbox.router,
        admin_journeys.router,
        admin_buckets.router,
        admin_bucket_backfill.router,
        campaigns.router,
        admin_imports.router,
        admin_reporting.router,
        admin_alerts.router,
    ):
        api.include_router(router)
