"""``python -m bot`` runs the ``rapport`` command line."""

from bot.cli import main

main()
