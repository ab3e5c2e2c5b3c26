"""Channels: email templates and providers (later: analytics, outgoing webhooks)."""
