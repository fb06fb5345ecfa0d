"""Scheduled and background work: the outbox delivery (and, to come, proactive jobs)."""
