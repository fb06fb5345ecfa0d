"""Rapport's storage: tables, engines, migrations and query functions."""

from storage import tables  # noqa: F401  (registers every table on the metadata)
from storage.db import database_status, ensure_schema, make_engine, open_database, transaction, upgrade
from storage.models import (
    Channel,
    ChannelIdentity,
    Customer,
    DeliveryStatus,
    DialogState,
    Direction,
    Intent,
    Message,
    PendingKind,
    Preference,
    Source,
    Suppression,
    utcnow,
)

__all__ = [
    "Channel",
    "ChannelIdentity",
    "Customer",
    "DeliveryStatus",
    "DialogState",
    "Direction",
    "Intent",
    "Message",
    "PendingKind",
    "Preference",
    "Source",
    "Suppression",
    "database_status",
    "ensure_schema",
    "make_engine",
    "open_database",
    "transaction",
    "upgrade",
    "utcnow",
]
