"""search: the full-text index covers conversations only, not outbound marketing

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Marketing messages (``message.marketing``: broadcasts, proactive plan suggestions, nudges) are
bot-written text, a broadcast the same template 100,000 times over; indexing them made preparing
a broadcast spend most of its time in the full-text index and filled text searches with copies
of the same offer. The console's text search now matches what customers wrote and the bot's
conversational replies; marketing messages are still found by customer, channel, date and review
filters, and shown in transcripts.

SQLite: the FTS5 table's external content becomes the view ``message_fts_source`` (the
non-marketing rows of ``message``), so ``'rebuild'`` and ``'integrity-check'`` agree with the
triggers, which now skip marketing rows (and move a row in or out when its flag changes).
PostgreSQL: the GIN expression index becomes partial, ``WHERE NOT marketing``; the search query
says ``NOT marketing`` too, which is what lets the planner use it. The planner ignores a partial
index's statistics, so without more it would guess how many messages a word is in (0.5%), and for
a rare word walk the whole table newest first looking for 50 (seconds at 1,000,000 messages):
statistics on the expression itself (PostgreSQL 14+) give it the word frequencies back.

Like 0006, no batch table rebuild of ``message`` on SQLite: it would drop the triggers (and a
rename would now also trip over the view).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGERS = ("message_fts_ai", "message_fts_ad", "message_fts_au")
_GIN = "CREATE INDEX ix_message_text_fts ON message USING gin (to_tsvector('simple', text))"
_STATS = "CREATE STATISTICS message_text_fts_stats ON (to_tsvector('simple', text)) FROM message"

_SQLITE_CONVERSATIONS = [
    "CREATE VIEW message_fts_source AS SELECT id, text FROM message WHERE NOT marketing",
    "CREATE VIRTUAL TABLE message_fts USING fts5(text, content='message_fts_source', content_rowid='id')",
    "CREATE TRIGGER message_fts_ai AFTER INSERT ON message WHEN NOT new.marketing BEGIN "
    "INSERT INTO message_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER message_fts_ad AFTER DELETE ON message WHEN NOT old.marketing BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    # A changed text, or a row whose marketing flag flips: out of the index as it was, in as it is.
    "CREATE TRIGGER message_fts_au AFTER UPDATE OF text, marketing ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, text) "
    "SELECT 'delete', old.id, old.text WHERE NOT old.marketing; "
    "INSERT INTO message_fts(rowid, text) SELECT new.id, new.text WHERE NOT new.marketing; END",
    "INSERT INTO message_fts(message_fts) VALUES ('rebuild')",
]


def _drop_sqlite_index() -> None:
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS message_fts")  # its shadow tables go with it
    op.execute("DROP VIEW IF EXISTS message_fts_source")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        if (bind.dialect.server_version_info or (0,)) < (14,):
            raise RuntimeError("Rapport needs PostgreSQL 14 or newer (statistics on expressions)")
        op.execute("DROP INDEX IF EXISTS ix_message_text_fts")
        op.execute(f"{_GIN} WHERE NOT marketing")
        op.execute(_STATS)
        op.execute("ANALYZE message")  # the dropped index's statistics went with it
    elif bind.dialect.name == "sqlite":
        _drop_sqlite_index()
        for statement in _SQLITE_CONVERSATIONS:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS message_text_fts_stats")
        op.execute("DROP INDEX IF EXISTS ix_message_text_fts")
        op.execute(_GIN)
        op.execute("ANALYZE message")
    elif bind.dialect.name == "sqlite":
        _drop_sqlite_index()
        # Migration 0005's index of every message, made by 0005's own statements.
        script = op.get_context().script
        assert script is not None
        for statement in script.get_revision("0005").module._SQLITE_FTS:
            op.execute(statement)
