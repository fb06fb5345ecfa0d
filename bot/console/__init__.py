"""The operator console: ``mount_console(app, runtime)`` serves it under ``/console``."""

from bot.console.app import SECURITY_HEADERS, SecurityHeaders, mount_console
from bot.console.auth import ConsoleConfig, add_user
from bot.console.routes import console_router
from bot.console.teach import TaughtBankCache, taught_bank

__all__ = [
    "SECURITY_HEADERS",
    "ConsoleConfig",
    "SecurityHeaders",
    "TaughtBankCache",
    "add_user",
    "console_router",
    "mount_console",
    "taught_bank",
]
