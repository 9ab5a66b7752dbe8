"""Idempotency keys: a POST that creates a job or a sweep may carry an `Idempotency-Key`; the
key, a digest of the request and the id of what it created are stored in the transaction that
creates it, so that a retry of a request whose answer was lost finds the first one's work."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel
from sqlalchemy import Connection, delete, insert, select

from app.store.tables import idempotency_keys


@dataclass(frozen=True)
class Claim:
    """A request's key: the collection posted to, the key, the request's digest, when it came
    and the oldest time a key is still kept."""

    scope: str
    key: str
    body_sha256: str
    at: str
    kept_since: str

    @classmethod
    def of(cls, scope: str, key: str, request: BaseModel, at: str, kept_since: str) -> Claim:
        # the parsed request, every field written out: bodies that mean the same are the same
        digest = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        return cls(scope, key, digest, at, kept_since)


@dataclass(frozen=True)
class Claimed:
    """The key came before, with the request that made `resource_id` (the same request, or
    another one when `same_request` is false)."""

    resource_id: str
    same_request: bool


def find(conn: Connection, claim: Claim) -> Claimed | None:
    """What an earlier request with this key made, if the key is still kept."""
    row = conn.execute(
        select(idempotency_keys.c.resource_id, idempotency_keys.c.body_sha256).where(
            idempotency_keys.c.scope == claim.scope,
            idempotency_keys.c.key == claim.key,
            idempotency_keys.c.created_at >= claim.kept_since,
        )
    ).first()
    if row is None:
        return None
    return Claimed(row.resource_id, row.body_sha256 == claim.body_sha256)


def take(conn: Connection, claim: Claim, resource_id: str) -> Claimed | None:
    """Record the key for `resource_id`, in the caller's transaction; or, if the key is taken,
    what took it (the caller then creates nothing). Keys past their time go first."""
    conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < claim.kept_since))
    earlier = find(conn, claim)
    if earlier is not None:
        return earlier
    conn.execute(
        insert(idempotency_keys).values(
            scope=claim.scope,
            key=claim.key,
            body_sha256=claim.body_sha256,
            resource_id=resource_id,
            created_at=claim.at,
        )
    )
    return None
