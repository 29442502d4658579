"""API tokens, principals and who may see which expert (no Dagster import).

Tokens are random (`ep_` + `secrets.token_urlsafe(32)`) and stored only as their SHA-256, so
the database never holds a usable token; a lookup by hash compares in constant time in effect
(the plaintext is never compared byte by byte). Each token belongs to an owner; operator
tokens see every expert.

Local mode: while no token exists, the API serves this machine only (the launcher binds it to
127.0.0.1) and every caller is `LOCAL_PRINCIPAL`, an operator without an owner.

Visibility is decided in one place (`Principal.sees`, `visible_expert_ids`, `can_see`): an
expert is visible to operators and to its owner. A progress row without an expert row
belongs to nobody (operators only).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ApiToken, Expert, utcnow

TOKEN_PREFIX = "ep_"
# last_used_at is written at most this often per token (not a write per request).
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str | None
    operator: bool = False

    def sees(self, owner: str | None) -> bool:
        """Whether an expert with this owner (None: no owner or no expert row) is visible."""
        return self.operator or (self.owner is not None and owner == self.owner)


LOCAL_PRINCIPAL = Principal(owner=None, operator=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Session, owner: str, operator: bool = False) -> str:
    """Store a new token for `owner` and return its plaintext (shown once, never stored)."""
    owner = (owner or "").strip()
    if not owner:
        raise ValueError("a token needs an owner")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(ApiToken(owner=owner, token_sha256=hash_token(token), operator=operator))
    db.commit()
    return token


def authenticate(db: Session, token: str | None) -> Principal | None:
    """The token's principal, or None when it is unknown."""
    if not token:
        return None
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token)))
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        db.commit()
    return Principal(owner=row.owner, operator=bool(row.operator))


# Built once: local mode asks this on every request, and building and keying a statement
# costs more than SQLite takes to answer it.
_ANY_TOKEN = select(ApiToken.id).limit(1)


def any_tokens(db: Session) -> bool:
    return db.scalar(_ANY_TOKEN) is not None


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def visible_expert_ids(principal: Principal) -> Select[tuple[str]] | None:
    """A subquery of the expert ids the principal may see; None means every expert."""
    if principal.operator:
        return None
    return select(Expert.id).where(Expert.owner == principal.owner)


def owners_of(db: Session, expert_ids: Sequence[str]) -> dict[str, str | None]:
    """expert id -> owner, for the ids that have an expert row."""
    if not expert_ids:
        return {}
    return dict(db.execute(select(Expert.id, Expert.owner).where(Expert.id.in_(list(expert_ids)))).all())


def can_see(db: Session, principal: Principal, expert_id: str) -> bool:
    """Whether the principal may see this expert (and its progress)."""
    if principal.operator:
        return True
    return principal.sees(owners_of(db, [expert_id]).get(expert_id))
