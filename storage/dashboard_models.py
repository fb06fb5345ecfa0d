"""The dashboard's daily roll-up: per day, metric and up to two dimensions, a count and an amount.

Filled by :func:`storage.dashboard.rollup_day` (a daily scheduler job, and ``rapport dashboard
rollup`` to backfill), so the console's dashboard reads a few rows per day instead of the
messages themselves. Also the indexes the roll-up's per-day queries walk."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import BigInteger, Date, Index, Numeric, String, Table
from sqlmodel import Column, Field, SQLModel

from storage import (  # noqa: F401  (tables indexed below)
    broadcast_models,
    handoff_models,
    models,
    outreach_models,
)


class DashboardDay(SQLModel, table=True):
    """One figure of one day: ``metric`` names it, ``dim1``/``dim2`` break it down ("" when not)."""

    __tablename__ = "dashboard_day"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    metric: str = Field(sa_column=Column(String(32), primary_key=True))
    dim1: str = Field(default="", sa_column=Column(String(200), primary_key=True))
    dim2: str = Field(default="", sa_column=Column(String(64), primary_key=True))
    count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    amount: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(16, 2), nullable=False))


DASHBOARD_DAY: Table = SQLModel.metadata.tables["dashboard_day"]

_T = SQLModel.metadata.tables
Index("ix_dashboard_metric_day", DASHBOARD_DAY.c.metric, DASHBOARD_DAY.c.day)
Index("ix_outreach_event_at", _T["outreach_event"].c.at)
Index("ix_switch_request_created_at", _T["switch_request"].c.created_at)
Index("ix_plan_decline_declined_at", _T["plan_decline"].c.declined_at)
Index("ix_customer_opted_out_at", _T["customer"].c.opted_out_at)
Index("ix_conversation_started_at", _T["conversation"].c.started_at)
Index("ix_broadcast_recipient_customer_id", _T["broadcast_recipient"].c.customer_id)
