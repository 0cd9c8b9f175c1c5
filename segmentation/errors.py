"""Exceptions of the pure core: input that cannot be used, with a reason a person can act on."""

from __future__ import annotations


class InvalidEvent(ValueError):
    """An input record that cannot be used. `reason` is a short, stable code (a metric label);
    `detail` says what to fix."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the offending key."""
