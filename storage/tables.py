"""The tables as SQLAlchemy Core ``Table`` objects, for queries that need no ORM objects."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (defines the tables)

_TABLES = SQLModel.metadata.tables
CUSTOMER: Table = _TABLES["customer"]
IDENTITY: Table = _TABLES["channel_identity"]
MESSAGE: Table = _TABLES["message"]
PREFERENCE: Table = _TABLES["preference"]
STATE: Table = _TABLES["dialog_state"]
PLAN: Table = _TABLES["plan"]
USAGE: Table = _TABLES["usage"]
SWITCH_REQUEST: Table = _TABLES["switch_request"]
PLAN_DECLINE: Table = _TABLES["plan_decline"]
SUPPRESSION: Table = _TABLES["suppression"]
