"""Tests of the dialogs package."""
