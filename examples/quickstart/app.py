"""A small hogsend project: two lists, two buckets, one welcome journey.

Run it from the repository root with ``hogsend dev`` (it is the default app), or point
any command at it: ``hogsend --app examples.quickstart.app:app check``.
"""

from __future__ import annotations

from pathlib import Path

from hogsend import (
    Contact,
    Hogsend,
    JourneyContext,
    days,
    define_bucket,
    define_journey,
    define_list,
)

product_updates = define_list(
    id="product-updates",
    name="Product updates",
    description="New features and improvements, about once a month.",
    default_opt_in=True,
)

tips = define_list(
    id="tips",
    name="Tips and tricks",
    description="Short emails on getting more out of the product.",
)

# Manual buckets for now: criteria arrive with the conditions engine.
trial_users = define_bucket(id="trial-users", name="Trial users")
vip_customers = define_bucket(id="vip-customers", name="VIP customers")


@define_journey(
    id="welcome",
    name="Welcome",
    trigger="signed_up",
    exit_on=["account_deleted"],
)
async def welcome(contact: Contact, ctx: JourneyContext) -> None:
    """Greet a new sign-up, then follow up with getting-started tips two days later."""
    await ctx.send_email(template="welcome")
    await ctx.sleep(days(2))
    await ctx.send_email(template="getting-started")


app = Hogsend(
    name="quickstart",
    journeys=[welcome],
    buckets=[trial_users, vip_customers],
    lists=[product_updates, tips],
    templates=Path(__file__).parent / "templates",
)
