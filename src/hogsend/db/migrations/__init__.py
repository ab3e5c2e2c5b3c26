"""Alembic migration chain of hogsend's schema, shipped inside the package."""
