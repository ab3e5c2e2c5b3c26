"""SQLAlchemy tables of hogsend's schema; importing this package registers them all."""

from hogsend.db.tables import auth as auth
from hogsend.db.tables import buckets as buckets
from hogsend.db.tables import campaigns as campaigns
from hogsend.db.tables import contacts as contacts
from hogsend.db.tables import email as email
from hogsend.db.tables import events as events
from hogsend.db.tables import imports as imports
from hogsend.db.tables import journeys as journeys
from hogsend.db.tables import operations as operations
from hogsend.db.tables.base import Base as Base
from hogsend.db.tables.base import metadata as metadata

__all__ = [
    "Base",
    "auth",
    "buckets",
    "campaigns",
    "contacts",
    "email",
    "events",
    "imports",
    "journeys",
    "metadata",
    "operations",
]
