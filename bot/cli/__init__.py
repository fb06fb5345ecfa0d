"""The ``rapport`` command line (typer): ``root`` mounts one module per command group, all of
which share ``common`` (output, settings, runtime, errors)."""

from bot.cli.root import app, main

__all__ = ["app", "main"]
