"""Rapport's edges: channels, web app, CLI and settings."""
