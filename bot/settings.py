"""Settings from the environment and ``.env`` (every one is listed in ``.env.example``)."""

from __future__ import annotations

import re
from datetime import time, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

import phonenumbers
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.whatsapp_templates import Templates, load_templates
from dialogs.advisor import AdviceConfig
from dialogs.engine import EngineConfig
from dialogs.handoff import HandoffConfig, Hours
from plans.fit import FitConfig
from schedulers.billing import BillingConfig
from schedulers.jobs import ScheduleConfig
from schedulers.nudges import NudgeConfig
from schedulers.policy import PolicyConfig, Window

_PLACEHOLDERS = {"changeme", "change-me", "secret", "your-token-here", "xxx", "todo"}


class Settings(BaseSettings):
    """Rapport's configuration. Names are the upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = "sqlite:///rapport.db"
    question_bank: Path | None = None
    company_name: str = "Rapport Mobile"
    bot_name: str = "Rapport"
    default_region: str = "US"
    confidence_threshold: float = Field(default=0.75, gt=0, le=1)
    resume_after_hours: float = Field(default=24, gt=0)
    skip_retry_hours: float = Field(default=24, ge=0)
    log_level: str = "INFO"
    library_log_level: str = "WARNING"
    spool_path: Path = Path("rapport-spool.db")

    fit_lookback: int = Field(default=3, ge=1, le=24)
    min_saving_abs: Decimal = Field(default=Decimal("5.00"), ge=0)
    min_saving_pct: Decimal = Field(default=Decimal("0.10"), ge=0, le=1)
    decline_days: int = Field(default=90, ge=0)
    decline_usage_change: Decimal = Field(default=Decimal("0.25"), ge=0)

    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    telegram_webhook_secret: SecretStr | None = None
    telegram_mode: Literal["auto", "polling", "webhook"] = "auto"
    telegram_rate_per_second: float = Field(default=30.0, gt=0)
    telegram_rate_per_chat: float = Field(default=1.0, gt=0)
    telegram_delete_webhook_on_stop: bool = False

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base_url: str | None = None
    sms_rate_per_second: float = Field(default=1.0, gt=0)
    sms_max_segments: int = Field(default=2, ge=1, le=10)
    sms_price_per_segment: Decimal = Field(default=Decimal("0.0079"), ge=0)
    twilio_whatsapp_from: str | None = None  # "+14155238886" (the sandbox) or "whatsapp:+1..."
    twilio_whatsapp_messaging_service_sid: str | None = None
    whatsapp_templates: Path | None = None  # TOML: intent -> approved template (outside the window)
    whatsapp_rate_per_second: float = Field(default=20.0, gt=0)

    public_base_url: str | None = None

    contact_window: str = "08:00-21:00"
    contact_window_by_region: dict[str, str] = Field(default_factory=dict)
    default_timezone: str = "UTC"
    proactive_cap: int = Field(default=1, ge=1)
    proactive_cap_days: float = Field(default=7, gt=0)
    holdout_percent: int = Field(default=10, ge=0, le=100)
    claim_lease_seconds: float = Field(default=10, ge=1, le=600)
    rate_headroom: float = Field(default=0.97, gt=0, le=1)
    proactive_scan_at: time = time(9, 0)  # UTC
    nudge_max: int = Field(default=2, ge=0)
    nudge_spacing_days: float = Field(default=3, gt=0)
    nudge_after_hours: float = Field(default=48, gt=0)
    nudge_every_minutes: float = Field(default=60, gt=0)
    scheduler_leader_retry_seconds: float = Field(default=5, gt=0)
    billing_webhook_url: str | None = None
    billing_webhook_secret: SecretStr | None = None

    handoff_hours: str = "Mon-Fri 09:00-17:00"
    handoff_timezone: str | None = None  # None: DEFAULT_TIMEZONE
    handoff_timeout_minutes: float = Field(default=15, gt=0)
    handoff_on_intents: str = ""  # comma-separated intents, e.g. "complaint"

    console_idle_minutes: float = Field(default=30, gt=0)
    console_max_failures: int = Field(default=5, ge=1)
    console_lockout_minutes: float = Field(default=15, gt=0)

    @field_validator("log_level", "library_log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        v = v.upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (e.g. US, GB, DE)")
        return v

    @field_validator(
        "telegram_bot_token", "telegram_webhook_secret", "twilio_auth_token", "billing_webhook_secret"
    )
    @classmethod
    def _no_placeholder(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value().strip().lower() in _PLACEHOLDERS:
            raise ValueError("is still a placeholder: set the real secret in .env, or leave it unset")
        if v is not None and not v.get_secret_value().strip():
            return None
        return v

    @field_validator("twilio_whatsapp_from")
    @classmethod
    def _whatsapp_from(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        number = v.strip().removeprefix("whatsapp:")
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", number):
            raise ValueError("is not an E.164 number such as +14155238886 (optionally whatsapp:+...)")
        return number

    @field_validator("whatsapp_templates")
    @classmethod
    def _whatsapp_templates(cls, v: Path | None) -> Path | None:
        load_templates(v)  # a missing file or a wrong entry fails at start-up, naming the problem
        return v

    @field_validator("contact_window")
    @classmethod
    def _window(cls, v: str) -> str:
        Window.parse(v)  # "08:00-21:00"; a typo fails at start-up
        return v

    @field_validator("handoff_hours")
    @classmethod
    def _handoff_hours(cls, v: str) -> str:
        Hours.parse(v)  # "Mon-Fri 09:00-17:00"; a typo fails at start-up
        return v

    @field_validator("contact_window_by_region")
    @classmethod
    def _windows(cls, v: dict[str, str]) -> dict[str, str]:
        for window in v.values():
            Window.parse(window)
        return v

    @field_validator("handoff_timezone")
    @classmethod
    def _handoff_zone(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    def handoff_config(self) -> HandoffConfig:
        """When a person answers, how long the customer waits before being told, and the rule."""
        zone = self.handoff_timezone or self.default_timezone
        return HandoffConfig(
            hours=Hours.parse(self.handoff_hours, zone),
            timeout=timedelta(minutes=self.handoff_timeout_minutes),
            on_intents=frozenset(i.strip() for i in self.handoff_on_intents.split(",") if i.strip()),
        )

    def engine_config(self) -> EngineConfig:
        """The dialog engine's tunables."""
        return EngineConfig(
            bot_name=self.bot_name,
            company_name=self.company_name,
            confidence_threshold=self.confidence_threshold,
            resume_after=timedelta(hours=self.resume_after_hours),
            skip_for=timedelta(hours=self.skip_retry_hours),
            advice=AdviceConfig(
                fit=self.fit_config(),
                decline_for=timedelta(days=self.decline_days),
                decline_usage_change=self.decline_usage_change,
            ),
            handoff=self.handoff_config(),
        )

    def configured_channels(self) -> frozenset[str]:
        """The channels whose settings are complete: ``telegram`` with ``TELEGRAM_BOT_TOKEN``, ``sms``
        with ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN`` and ``TWILIO_FROM_NUMBER`` (or
        ``TWILIO_MESSAGING_SERVICE_SID``), ``whatsapp`` with the same account and
        ``TWILIO_WHATSAPP_FROM`` (or ``TWILIO_WHATSAPP_MESSAGING_SERVICE_SID``): the same conditions
        under which ``rapport run`` starts them."""
        channels = set()
        if self.telegram_bot_token is not None:
            channels.add("telegram")
        if (
            self.twilio_account_sid
            and self.twilio_auth_token is not None
            and (self.twilio_from_number or self.twilio_messaging_service_sid)
        ):
            channels.add("sms")
        if (
            self.twilio_account_sid
            and self.twilio_auth_token is not None
            and (self.twilio_whatsapp_from or self.twilio_whatsapp_messaging_service_sid)
        ):
            channels.add("whatsapp")
        return frozenset(channels)

    def whatsapp_templates_config(self) -> Templates:
        """The WhatsApp templates by intent (checked when the settings were read)."""
        return load_templates(self.whatsapp_templates)

    def policy_config(self) -> PolicyConfig:
        """The contact policy for proactive messages, on the configured channels. Built once per
        process (:attr:`bot.runtime.Runtime.policy`); everything that asks who may be contacted
        uses that one."""
        return PolicyConfig(
            window=Window.parse(self.contact_window),
            region_windows={k.upper(): Window.parse(v) for k, v in self.contact_window_by_region.items()},
            default_timezone=self.default_timezone,
            default_region=self.default_region,
            cap=self.proactive_cap,
            cap_period=timedelta(days=self.proactive_cap_days),
            channels=self.configured_channels(),
            whatsapp_templates=self.whatsapp_templates_config().intents,
            holdout_percent=self.holdout_percent,
        )

    def nudge_config(self) -> NudgeConfig:
        """Nudges to customers who left their profile half done."""
        return NudgeConfig(
            self.nudge_max, timedelta(days=self.nudge_spacing_days), timedelta(hours=self.nudge_after_hours)
        )

    def schedule_config(self) -> ScheduleConfig:
        """When the scheduled jobs run."""
        return ScheduleConfig(
            scan_at=self.proactive_scan_at,
            nudge_every=timedelta(minutes=self.nudge_every_minutes),
            leader_retry=self.scheduler_leader_retry_seconds,
        )

    def billing_config(self) -> BillingConfig | None:
        """Where switch requests go, or None when no billing webhook is set."""
        if not self.billing_webhook_url:
            return None
        secret = self.billing_webhook_secret.get_secret_value() if self.billing_webhook_secret else ""
        return BillingConfig(self.billing_webhook_url, secret)

    def fit_config(self) -> FitConfig:
        """The plan-fit rule's tunables."""
        return FitConfig(
            lookback=self.fit_lookback, min_saving_abs=self.min_saving_abs, min_saving_pct=self.min_saving_pct
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
