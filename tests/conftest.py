"""Shared fixtures; the heavy ones live in tests/fixtures/."""
