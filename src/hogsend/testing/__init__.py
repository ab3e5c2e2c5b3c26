"""Test support for hogsend's own tests and users' projects.

:class:`JourneyHarness` runs a journey against fakes on a virtual clock (see
docs/testing.md). Importing this package needs no database.
"""

from hogsend.testing.harness import HarnessContext as HarnessContext
from hogsend.testing.harness import HarnessError as HarnessError
from hogsend.testing.harness import JourneyExit as JourneyExit
from hogsend.testing.harness import JourneyHarness as JourneyHarness
from hogsend.testing.harness import SendAttempt as SendAttempt
from hogsend.testing.harness import SentEmail as SentEmail
from hogsend.testing.harness import StepLog as StepLog
from hogsend.testing.harness import make_contact as make_contact

__all__ = [
    "HarnessContext",
    "HarnessError",
    "JourneyExit",
    "JourneyHarness",
    "SendAttempt",
    "SentEmail",
    "StepLog",
    "make_contact",
]
