"""SQLAlchemy tables of hogsend's schema; importing this package registers them all."""

from hogsend.db.tables import auth as auth
from hogsend.db.tables import operations as operations
from hogsend.db.tables.base import Base as Base
from hogsend.db.tables.base import metadata as metadata

__all__ = ["Base", "auth", "metadata", "operations"]
