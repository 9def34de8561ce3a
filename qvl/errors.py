"""Errors as types (house style): one place per adapter decides what the user reads."""

from __future__ import annotations


class UserFacingError(Exception):
    """Carries the short, polite message a user should read; never a traceback.

    Build it from the message table (:meth:`of`) so that it can be read in the
    user's language, or from plain English text for operator-facing errors (the
    command line). :meth:`text` picks the language.
    """

    def __init__(self, message: str, *, zh: str | None = None):
        super().__init__(message)
        self.message = message
        self.zh = zh  # the same message in Chinese, where we have it

    @classmethod
    def of(cls, key: str, **values: object) -> UserFacingError:
        """The error whose words are ``key`` in :data:`qvl.messages.MESSAGES`."""
        from qvl.messages import say

        return cls(say(key, "en", **values), zh=say(key, "zh", **values))

    def text(self, language: str | None) -> str:
        """The message in ``language`` ("zh" or English), falling back to English."""
        return self.zh if language == "zh" and self.zh else self.message
