"""A small hogsend project: two lists, four buckets, four journeys, eight templates.

The journeys: a welcome series (``welcome``), trial-ending reminders (``trial-ending``),
a failed-payment recovery (``payment-recovery``) and a win-back that runs when a
contact lands in the ``lapsed`` bucket (its ``on_enter`` reaction, which runs as the
journey ``bucket-lapsed-on-enter``). tests/unit/test_quickstart_journeys.py drives each
with ``hogsend.testing.JourneyHarness``.

Run it from the repository root with ``hogsend dev`` (it is the default app), or point
any command at it: ``hogsend --app examples.quickstart.app:app check``.
"""

from __future__ import annotations

from datetime import datetime
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


class PaymentFinalNoticeProps(BaseModel):
    """What the last payment reminder needs to know."""

    amount: str
    plan: str
    pause_on: str
    update_url: HttpUrl


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
        "payment-final-notice": PaymentFinalNoticeProps,
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
        "payment-final-notice": {
            "amount": "$49.00",
            "plan": "Pro",
            "pause_on": "March 21",
            "update_url": "https://example.com/billing/card",
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
    """Someone went quiet for two weeks: a win-back offer, and one last reminder a
    week later unless they came back (opening the app also takes them out of the
    bucket)."""
    await ctx.send_email(
        template="win-back", props={"offer": "Come back this month and get 20% off for a year."}
    )
    back = await ctx.wait_for_event("app.opened", timeout=days(7))
    if back is not None:
        await ctx.log("came back", after="first email")
        return
    await ctx.send_email(
        template="win-back",
        props={"offer": "Last call: your 20% off ends this Friday."},
        send_window=ctx.when().weekdays().between("09:00", "17:00"),
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


def _date(value: datetime) -> str:
    """``March 14``: how the emails write a day."""
    return f"{value:%B} {value.day}"


@define_journey(
    id="trial-ending",
    name="Trial ending",
    trigger="trial_started",
    exit_on=["subscription_started", "account_deleted"],
)
async def trial_ending(contact: Contact, ctx: JourneyContext) -> None:
    """Remind a trial user three days and one day before the trial ends (during their
    working hours); subscribing ends the journey. The app sends ``trial_started`` with
    ``trialEndsAt`` (ISO 8601) and ``plan``; without ``trialEndsAt`` a trial lasts 14 days."""
    properties = ctx.trigger_event.properties
    given = properties.get("trialEndsAt")
    ends = (
        datetime.fromisoformat(given)
        if isinstance(given, str)
        else ctx.trigger_event.occurred_at + days(14)
    )
    for days_left in (3, 1):
        await ctx.sleep_until(ends - days(days_left))
        await ctx.send_email(
            template="trial-ending",
            props={
                "plan": properties.get("plan", "Pro"),
                "days_left": days_left,
                "ends_on": _date(ends),
            },
            send_window=ctx.when().between("09:00", "18:00"),
        )


@define_journey(
    id="payment-recovery",
    name="Payment failed — recovery",
    trigger="payment_failed",
    entry_limit="unlimited",
    exit_on=["account_deleted"],
)
async def payment_recovery(contact: Contact, ctx: JourneyContext) -> None:
    """A renewal charge failed: tell the customer at once, and if that invoice is still
    unpaid three days later, send a last reminder before the plan pauses. The billing
    system sends ``payment_failed`` and ``payment_succeeded`` with ``invoiceId``;
    ``payment_failed`` also carries ``amount``, ``plan``, ``cardLast4`` and ``updateUrl``."""
    invoice = ctx.trigger_event.properties
    failed_at = ctx.trigger_event.occurred_at
    paid_for_it = {"invoiceId": invoice["invoiceId"]}
    await ctx.send_email(
        template="payment-failed",
        props={
            "amount": invoice["amount"],
            "plan": invoice["plan"],
            "retry_on": _date(failed_at + days(3)),
            "update_url": invoice["updateUrl"],
            "card_last4": invoice.get("cardLast4"),
        },
    )
    paid = await ctx.wait_for_event("payment_succeeded", timeout=days(3), match=paid_for_it)
    if paid is None:
        await ctx.send_email(
            template="payment-final-notice",
            props={
                "amount": invoice["amount"],
                "plan": invoice["plan"],
                "pause_on": _date(failed_at + days(7)),
                "update_url": invoice["updateUrl"],
            },
        )
        paid = await ctx.wait_for_event("payment_succeeded", timeout=days(4), match=paid_for_it)
    await ctx.log("recovered" if paid is not None else "unpaid", invoiceId=invoice["invoiceId"])


app = Hogsend(
    name="quickstart",
    journeys=[welcome, trial_ending, payment_recovery],
    buckets=[trial_users, power_users, lapsed, vip_customers],
    lists=[product_updates, tips],
    templates=templates,
)
