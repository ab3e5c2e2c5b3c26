"""What a person's email preferences are, and what a submitted preference form changes. No I/O.

The state is two things kept apart on purpose: a global unsubscribe, and one choice per
list. A list's choice survives a global unsubscribe, so resubscribing to everything
brings back exactly the lists the person had. The polarity rule is the mailer's
(:func:`hogsend.core.mailer_gates.is_subscribed`): one rule for sending, counting and
showing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from hogsend.core.definitions import ListDefinition
from hogsend.core.mailer_gates import TRANSACTIONAL_CATEGORY, is_subscribed


@dataclass(frozen=True, slots=True, kw_only=True)
class ListState:
    """One list (or category) as the person's preferences see it.

    Attributes:
        id: the list or category id.
        name: the registered list's name; the id for a category no list registers.
        description: the registered list's description.
        default_opt_in: the list's polarity; None for a category no list registers
            (treated as subscribed until an explicit unsubscribe).
        choice: the person's explicit choice, None if they made none.
    """

    id: str
    name: str
    description: str = ""
    default_opt_in: bool | None = None
    choice: bool | None = None

    @property
    def subscribed(self) -> bool:
        """Whether a send to this list would pass the list check (ignoring a global opt-out)."""
        return is_subscribed(default_opt_in=self.default_opt_in, choice=self.choice)


def list_states(lists: Sequence[ListDefinition], choices: Mapping[str, bool]) -> list[ListState]:
    """The registered lists in registration order, then categories with a choice, by id.

    A category appears only once the person has chosen something for it (typically an
    unsubscribe from a message of that category), so they can take the choice back.
    The ``transactional`` category never appears: it cannot be unsubscribed from.
    """
    states = [
        ListState(
            id=item.id,
            name=item.name,
            description=item.description,
            default_opt_in=item.default_opt_in,
            choice=choices.get(item.id),
        )
        for item in lists
    ]
    registered = {item.id for item in lists}
    for list_id in sorted(choices):
        if list_id not in registered and list_id != TRANSACTIONAL_CATEGORY:
            states.append(ListState(id=list_id, name=list_id, choice=choices[list_id]))
    return states


def form_changes(
    states: Sequence[ListState], *, shown: Collection[str], checked: Collection[str]
) -> dict[str, bool]:
    """The list choices a submitted preference form makes: only what differs from now.

    Args:
        states: the person's current list states.
        shown: ids the form displayed (a list registered after the page was rendered is
            left alone rather than read as unticked).
        checked: ids ticked on submission.

    A box left as it was writes nothing, so a list nobody chose for keeps following
    its default.
    """
    changes: dict[str, bool] = {}
    for state in states:
        if state.id not in shown:
            continue
        wanted = state.id in checked
        if wanted != state.subscribed:
            changes[state.id] = wanted
    return changes


def one_click_target(list_id: str | None) -> str | None:
    """What a one-click unsubscribe from a message with ``list_id`` unsubscribes from.

    The list or category itself; everything (None) when the message had none, or when
    it was ``transactional``, which no list choice can stop: the click must have an
    effect.
    """
    if list_id is None or list_id == TRANSACTIONAL_CATEGORY:
        return None
    return list_id
