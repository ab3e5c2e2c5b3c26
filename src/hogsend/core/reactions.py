"""Bucket reactions as journeys: the definitions the runtime runs for them (no I/O).

A reaction registered with ``@bucket.on_enter()``, ``on_leave()`` or ``on_dwell()``
runs exactly like a journey: durable, parked in long waits, exited by admin cancel or
contact deletion. :func:`reaction_journey` turns one into a
:class:`~hogsend.core.definitions.JourneyDefinition`:

- id: :attr:`BucketReaction.journey_id` (``bucket-<bucket>-on-enter``, ``-on-leave``,
  ``-on-dwell-<label>``), so its workflow is ``hogsend.journey:<that id>``;
- trigger: the transition event, filtered on its properties for ``first_entry_only``
  (``epoch`` is 1) and ``on_leave(reason=...)`` (``reason`` is one of them);
- ``entry_limit="unlimited"``: each transition is its own enrollment (the trigger
  event's id makes a redelivery enroll once), one live run per contact at a time;
- ``bucket_id``: the bucket's enable switch gates the enrollment, as the journey's does.
"""

from __future__ import annotations

from collections.abc import Iterable

from hogsend.core.conditions.builder import where
from hogsend.core.definitions import (
    BucketDefinition,
    BucketReaction,
    EventSpec,
    JourneyDefinition,
)
from hogsend.core.identifiers import duplicates
from hogsend.errors import DefinitionError

_KIND_NAMES = {"enter": "on enter", "leave": "on leave", "dwell": "on dwell"}


def reaction_trigger(reaction: BucketReaction) -> EventSpec:
    """The trigger of a reaction's journey: its transition event, filtered as it says."""
    if reaction.kind == "enter" and reaction.first_entry_only:
        return where.event(reaction.event).where(where.property("epoch").equals(1)).exists()
    if reaction.kind == "leave" and reaction.reasons:
        return (
            where.event(reaction.event)
            .where(where.property("reason").one_of(reaction.reasons))
            .exists()
        )
    return reaction.event


def reaction_journey(bucket: BucketDefinition, reaction: BucketReaction) -> JourneyDefinition:
    """The journey a bucket reaction runs as (see the module docstring)."""
    what = _KIND_NAMES[reaction.kind]
    if reaction.label is not None:
        what = f"{what} ({reaction.label})"
    return JourneyDefinition(
        id=reaction.journey_id,
        name=f"{bucket.name}: {what}",
        body=reaction.handler,
        trigger=reaction_trigger(reaction),
        entry_limit="unlimited",
        bucket_id=bucket.id,
        description=reaction.handler.__doc__ or "",
    )


def reaction_journeys(buckets: Iterable[BucketDefinition]) -> tuple[JourneyDefinition, ...]:
    """The journeys of every reaction of ``buckets``, in registration order."""
    return tuple(reaction_journey(b, r) for b in buckets for r in b.reactions)


def all_journeys(
    journeys: Iterable[JourneyDefinition], buckets: Iterable[BucketDefinition]
) -> tuple[JourneyDefinition, ...]:
    """The user's journeys followed by the bucket reactions' journeys.

    Raises:
        DefinitionError: a reaction's journey id is also a journey's id (both would be
            the same durable workflow); the message names the id and how to fix it.
    """
    found = (*journeys, *reaction_journeys(buckets))
    clashes = duplicates(j.id for j in found)
    if clashes:
        raise DefinitionError(
            "journey ids used by both a journey and a bucket reaction: "
            + ", ".join(clashes)
            + " (a reaction runs as the journey 'bucket-<bucket>-on-<kind>'; "
            "rename the journey)"
        )
    return found
