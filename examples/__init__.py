"""Example hogsend projects (importable from the repository root)."""
