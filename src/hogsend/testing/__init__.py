"""Test support for hogsend's own tests and users' projects."""
