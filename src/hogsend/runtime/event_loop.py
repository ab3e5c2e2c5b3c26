"""The event loop hogsend's processes run on: uvloop's where it is installed.

The worker's sending is mostly event-loop work (a socket write, a wake-up and a read per
SMTP command, a database round trip per statement), which uvloop does in C: measured
in one process alternating the two loops, about 5% less CPU per message on the mailer's
batch path and 8% for the SMTP provider alone (the email guide, "Performance: the
sending process, session 11"). uvloop is a dependency where it builds (not on Windows);
elsewhere asyncio's own loop runs, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on uvloop's event loop when uvloop is installed."""
    try:
        import uvloop
    except ImportError:  # Windows, or an interpreter uvloop does not build for
        return asyncio.run(main)
    return uvloop.run(main)
