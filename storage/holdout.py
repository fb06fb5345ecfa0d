"""The holdout: a stable share of customers who are never offered a plan proactively, so the
dashboard can measure what the offers change against customers who got none.

A customer's bucket (0-99) is a multiplicative hash of their id, the same in Python
(:func:`bucket`) and in SQL (:func:`bucket_sql`), so a query can split a cohort without reading
each customer. It never changes for a customer, whatever the percentage."""

from __future__ import annotations

from sqlalchemy import BigInteger, ColumnElement, cast

_MULTIPLIER = 40503
_PRIME = 65537  # a permutation of ids modulo this prime, then folded onto 100 buckets


def bucket(customer_id: int) -> int:
    """The customer's holdout bucket, 0-99."""
    return (customer_id * _MULTIPLIER) % _PRIME % 100


def in_holdout(customer_id: int, percent: int) -> bool:
    """Whether the customer is in a holdout of ``percent`` per cent (0: nobody, 100: everybody)."""
    return bucket(customer_id) < percent


def bucket_sql(customer_id: ColumnElement[int]) -> ColumnElement[int]:
    """:func:`bucket` as a SQL expression (64-bit arithmetic on both databases)."""
    return (cast(customer_id, BigInteger) * _MULTIPLIER) % _PRIME % 100
