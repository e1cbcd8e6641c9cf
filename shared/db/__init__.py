"""The store: the one place Python talks to the database, always through the SQL functions."""

from shared.db.errors import StoreError, StoreUnavailable
from shared.db.store import BufferStore, Connector

__all__ = ["BufferStore", "Connector", "StoreError", "StoreUnavailable"]
