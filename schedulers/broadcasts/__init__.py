"""Staff broadcasts: a template sent to a segment of customers, tailored per customer, through the
audience service (:mod:`schedulers.audience`: contact facts and the contact policy) and the outbox.

Functions take their inputs explicitly (engine, advisor, policy config, clock); the CLI and the
console are thin. The package's parts:

- :mod:`.facts`: each customer's facts, read a batch of ids at a time (preferences, usage -> plan
  fit, months over the allowance, a recent decline of the offer, and the audience's contact
  facts), and :func:`judge`, the one question preview, dry run and send ask of a customer;
- :mod:`.templates`: sandboxed Jinja2, checked at create time, rendered per customer;
- :mod:`.lifecycle`: create, send, prepare (one transaction a batch: one marketing message and a
  ``broadcast_recipient`` row per recipient, unique per broadcast and customer, so a re-run never
  sends twice), cancel; the states and their moves in one table, :data:`TRANSITIONS`;
- :mod:`.report`: dry run, preview, status and results; reads that never write.

This module only re-exports the public surface.
"""

from schedulers.broadcasts.errors import BroadcastError
from schedulers.broadcasts.facts import SEGMENT, Facts, facts_batch, iter_facts, judge
from schedulers.broadcasts.lifecycle import (
    BROADCAST_INTENT,
    CANCELLED,
    TRANSITIONS,
    SendReport,
    cancel,
    create,
    get,
    local_moment,
    parse_local_time,
    prepare,
    prepare_due,
    progress,
    send,
    settle,
    state_of,
)
from schedulers.broadcasts.report import (
    Confirmation,
    DryRun,
    Preview,
    Status,
    confirmation,
    dry_run,
    list_broadcasts,
    preview,
    sent_text,
    status,
)
from schedulers.broadcasts.templates import (
    MAX_RENDERED,
    OFFER_FIELDS,
    TEMPLATE_FIELDS,
    compile_template,
    is_offer,
    render,
    template_context,
)

__all__ = [
    "BROADCAST_INTENT",
    "CANCELLED",
    "MAX_RENDERED",
    "OFFER_FIELDS",
    "SEGMENT",
    "TEMPLATE_FIELDS",
    "TRANSITIONS",
    "BroadcastError",
    "Confirmation",
    "DryRun",
    "Facts",
    "Preview",
    "SendReport",
    "Status",
    "cancel",
    "compile_template",
    "confirmation",
    "create",
    "dry_run",
    "facts_batch",
    "get",
    "is_offer",
    "iter_facts",
    "judge",
    "list_broadcasts",
    "local_moment",
    "parse_local_time",
    "prepare",
    "prepare_due",
    "preview",
    "progress",
    "render",
    "send",
    "sent_text",
    "settle",
    "state_of",
    "status",
    "template_context",
]
