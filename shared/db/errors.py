from __future__ import annotations


class StoreError(Exception):
    """The database refused a call; the message keeps its reason."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # SQLSTATE, when the database gave one


class StoreUnavailable(StoreError):
    """The database could not be reached."""
