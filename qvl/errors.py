"""Errors as types (house style): one place per adapter decides what the user reads."""


class UserFacingError(Exception):
    """Carries the short, polite message a user should read; never a traceback."""

    def __init__(self, message: str, *, zh: str | None = None):
        super().__init__(message)
        self.message = message
        self.zh = zh  # the same message in Chinese, where we have it


class TransientError(Exception):
    """Worth retrying with backoff (a broker blip, a busy server)."""
