"""Logging for every ``rapport`` command: one level from ``LOG_LEVEL``, chatty libraries quiet,
and no secret in any log line.

httpx logs every request URL at INFO, and the Bot API puts the bot token in the URL; twilio
logs a dozen INFO lines per message sent. Those libraries log at ``LIBRARY_LOG_LEVEL`` (WARNING by
default), and whatever they or we log is redacted: every secret setting (and the database
password) is replaced by ``[redacted]`` before any handler sees the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import quote

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.settings import Settings

LIBRARIES = ("httpx", "httpcore", "telegram", "twilio", "apscheduler", "hpack", "urllib3", "alembic")
REDACTED = "[redacted]"
MIN_SECRET = 6  # shorter values would redact ordinary words


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in ``settings`` (and the database password), longest first."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
    try:
        password = make_url(settings.database_url).password
    except ArgumentError:
        password = None
    if password:
        found.add(str(password))
    variants = {v for s in found for v in (s, quote(s, safe=""), quote(s)) if len(s) >= MIN_SECRET}
    return sorted(variants, key=len, reverse=True)


class _Redacting:
    """A log record factory that takes secrets out of the message and any traceback."""

    def __init__(self, inner: Callable[..., logging.LogRecord], secrets: Iterable[str]) -> None:
        self.inner = inner
        self.secrets = tuple(secrets)
        self._formatter = logging.Formatter()

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def __call__(self, *args: object, **kwargs: object) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._clean(self._formatter.formatException(record.exc_info))
        return record


def redact(secrets: Iterable[str]) -> None:
    """From now on, no log record (whatever logger, whatever handler) holds these secrets."""
    factory = logging.getLogRecordFactory()
    inner = factory.inner if isinstance(factory, _Redacting) else factory
    values = [s for s in secrets if len(s) >= MIN_SECRET]
    logging.setLogRecordFactory(_Redacting(inner, sorted(set(values), key=len, reverse=True)))


def configure_logging(settings: Settings, handler: logging.Handler | None = None) -> None:
    """Set up logging as ``settings`` say: ``LOG_LEVEL`` for Rapport, ``LIBRARY_LOG_LEVEL``
    for the libraries in :data:`LIBRARIES`, secrets redacted."""
    logging.basicConfig(
        level=settings.log_level,
        # A handler of its own (rich) shows the time and level itself.
        format="%(message)s" if handler is not None else "%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler] if handler is not None else None,
    )
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(settings.library_log_level)
    redact(secrets_of(settings))
