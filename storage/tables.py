"""Every table as a SQLAlchemy Core ``Table``, for the query functions. Importing this module
registers every table module on the metadata (``storage`` imports it, so any import of ours does).
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

from storage import (  # noqa: F401  (each defines its tables on the metadata)
    broadcast_models,
    console_models,
    dashboard_models,
    handoff_models,
    link_models,
    models,
    outreach_models,
)

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
CONSOLE_USER: Table = _TABLES["console_user"]
CONSOLE_SESSION: Table = _TABLES["console_session"]
AUDIT_EVENT: Table = _TABLES["audit_event"]
MESSAGE_REVIEW: Table = _TABLES["message_review"]
TAUGHT_SYNONYM: Table = _TABLES["taught_synonym"]
LINK_CODE: Table = _TABLES["link_code"]
OUTREACH_EVENT: Table = _TABLES["outreach_event"]
BILLING_DELIVERY: Table = _TABLES["billing_delivery"]
DELIVERY_ATTEMPT: Table = _TABLES["delivery_attempt"]
RATE_BUCKET: Table = _TABLES["rate_bucket"]
BROADCAST: Table = _TABLES["broadcast"]
BROADCAST_RECIPIENT: Table = _TABLES["broadcast_recipient"]
CONVERSATION: Table = _TABLES["conversation"]
CONVERSATION_NOTE: Table = _TABLES["conversation_note"]
DASHBOARD_DAY: Table = _TABLES["dashboard_day"]
