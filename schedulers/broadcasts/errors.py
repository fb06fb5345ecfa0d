"""The error of the broadcasts package."""

from __future__ import annotations


class BroadcastError(ValueError):
    """A broadcast that cannot be created or acted on (bad segment or template, wrong status)."""
