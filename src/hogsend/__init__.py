"""hogsend: a code-first customer-lifecycle engine on Postgres.

This module is the public authoring API. Importing it pulls in no database, HTTP or
durable-execution library: definitions are inert until a process launches the app.
"""

from typing import TYPE_CHECKING

from hogsend.app import Hogsend as Hogsend
from hogsend.app import load_app as load_app
from hogsend.core.conditions import Condition as Condition
from hogsend.core.conditions import where as where
from hogsend.core.contact import Contact as Contact
from hogsend.core.contact import Event as Event
from hogsend.core.definitions import BucketDefinition as BucketDefinition
from hogsend.core.definitions import JourneyDefinition as JourneyDefinition
from hogsend.core.definitions import ListDefinition as ListDefinition
from hogsend.core.definitions import define_bucket as define_bucket
from hogsend.core.definitions import define_journey as define_journey
from hogsend.core.definitions import define_list as define_list
from hogsend.core.durations import days as days
from hogsend.core.durations import hours as hours
from hogsend.core.durations import minutes as minutes
from hogsend.core.durations import seconds as seconds
from hogsend.core.durations import weeks as weeks
from hogsend.core.journey_context import JourneyContext as JourneyContext
from hogsend.errors import HogsendError as HogsendError

if TYPE_CHECKING:
    from hogsend.channels.templates import TemplateRegistry as TemplateRegistry

__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> object:
    # TemplateRegistry pulls in Jinja2; load it only when someone asks for it.
    if name == "TemplateRegistry":
        from hogsend.channels.templates import TemplateRegistry

        return TemplateRegistry
    raise AttributeError(f"module 'hogsend' has no attribute {name!r}")


__all__ = [
    "BucketDefinition",
    "Condition",
    "Contact",
    "Event",
    "Hogsend",
    "HogsendError",
    "JourneyContext",
    "JourneyDefinition",
    "ListDefinition",
    "TemplateRegistry",
    "days",
    "define_bucket",
    "define_journey",
    "define_list",
    "hours",
    "load_app",
    "minutes",
    "seconds",
    "weeks",
    "where",
]
