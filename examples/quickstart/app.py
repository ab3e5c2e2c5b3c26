"""A small hogsend project: two lists, four buckets, one welcome journey, seven templates.

Run it from the repository root with ``hogsend dev`` (it is the default app), or point
any command at it: ``hogsend --app examples.quickstart.app:app check``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, HttpUrl

from hogsend import (
    Contact,
    Hogsend,
    JourneyContext,
    days,
    define_bucket,
    define_journey,
    define_list,
    where,
)
from hogsend.channels.templates import TemplateRegistry


class TrialEndingProps(BaseModel):
    """What the trial-ending email needs to know."""

    plan: str = "Pro"
    days_left: int
    ends_on: str
    upgrade_url: HttpUrl = HttpUrl("https://example.com/billing")


class PaymentFailedProps(BaseModel):
    """What the payment-failed email needs to know."""

    amount: str
    plan: str
    retry_on: str
    update_url: HttpUrl
    card_last4: str | None = None


class NewsletterItem(BaseModel):
    heading: str
    body: str
    url: HttpUrl | None = None


class NewsletterProps(BaseModel):
    """One issue of the monthly newsletter."""

    title: str
    intro: str
    items: list[NewsletterItem]


templates = TemplateRegistry(
    Path(__file__).parent / "templates",
    props={
        "trial-ending": TrialEndingProps,
        "payment-failed": PaymentFailedProps,
        "newsletter": NewsletterProps,
    },
    examples={
        "trial-ending": {"days_left": 3, "ends_on": "March 14"},
        "payment-failed": {
            "amount": "$49.00",
            "plan": "Pro",
            "retry_on": "March 17",
            "update_url": "https://example.com/billing/card",
            "card_last4": "4242",
        },
        "win-back": {"offer": "Come back this month and get 20% off for a year."},
        "newsletter": {
            "title": "What's new in March",
            "intro": "Faster dashboards, a Slack integration and smarter alerts.",
            "items": [
                {
                    "heading": "Dashboards load in half the time",
                    "body": "We rebuilt the query layer; big projects feel it most.",
                    "url": "https://example.com/blog/faster-dashboards",
                },
                {
                    "heading": "Alerts in Slack",
                    "body": "Send any alert to a channel, with a link back to the chart.",
                },
            ],
        },
    },
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

# Everyone on a trial plan (the app sends `contactProperties: {"plan": "trial"}`).
trial_users = define_bucket(
    id="trial-users",
    name="Trial users",
    criteria=where.property("plan").equals("trial"),
    max_dwell=days(30),
)

# Used the app on 5+ days this week; a member stays at least 3 days, so one quiet
# day does not bounce them out and back in.
power_users = define_bucket(
    id="power-users",
    name="Power users",
    criteria=where.event("app.opened").within(days(7)).at_least(5),
    min_dwell=days(3),
)

# Were active once, but not in the last 14 days.
lapsed = define_bucket(
    id="lapsed",
    name="Lapsed users",
    criteria=where.all(
        where.event("app.opened").exists(),
        where.event("app.opened").within(days(14)).not_exists(),
    ),
)

# Hand-picked in Studio or through the admin API.
vip_customers = define_bucket(id="vip-customers", name="VIP customers", kind="manual")


@lapsed.on_enter()
async def win_back(contact: Contact, ctx: JourneyContext) -> None:
    """Someone went quiet: one win-back email."""
    await ctx.send_email(
        template="win-back", props={"offer": "Come back this month and get 20% off for a year."}
    )


@power_users.on_dwell(after=days(14))
async def ask_for_review(contact: Contact, ctx: JourneyContext) -> None:
    """Two weeks as a power user: a good moment for a nudge."""
    await ctx.send_email(template="nudge")


@define_journey(
    id="welcome",
    name="Welcome",
    trigger="signed_up",
    exit_on=["account_deleted"],
)
async def welcome(contact: Contact, ctx: JourneyContext) -> None:
    """Greet a new sign-up, send getting-started tips two days later, and nudge those
    who have not created a project within five more days (weekdays, office hours)."""
    await ctx.send_email(template="welcome")
    await ctx.sleep(days(2))
    await ctx.send_email(template="getting-started")
    created = await ctx.wait_for_event("project_created", timeout=days(5), lookback=days(2))
    if created is None:
        await ctx.send_email(
            template="nudge", send_window=ctx.when().weekdays().between("09:00", "17:00")
        )


app = Hogsend(
    name="quickstart",
    journeys=[welcome],
    buckets=[trial_users, power_users, lapsed, vip_customers],
    lists=[product_updates, tips],
    templates=templates,
)
