"""Tests of the schedulers package."""
