"""API tokens, principals and who may see which expert (no Dagster import).

Tokens are random (`ep_` + `secrets.token_urlsafe(32)`) and stored only as their SHA-256, so
the database never holds a usable token; a lookup by hash compares in constant time in effect
(the plaintext is never compared byte by byte). Each token belongs to an owner; operator
tokens see every expert.

Local mode: while no token exists, the API serves this machine only (the launcher binds it to
127.0.0.1, and the API's gate refuses other peers, other Host names and foreign Origins) and
every caller is `LOCAL_PRINCIPAL`, an operator without an owner.

A token may expire (`expires_at`) or be revoked (`revoked_at`, the row is kept): either way it
is refused with a message saying which. Live streams are opened with a stream ticket instead
of the token (a URL ends up in logs): single-use, valid `STREAM_TICKET_SECONDS`, stored as its
SHA-256 in the database so any API worker can redeem it.

Visibility is decided in one place (`Principal.sees`, `visible_expert_ids`, `can_see`): an
expert is visible to operators and to its owner. A progress row without an expert row
belongs to nobody (operators only).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, or_, select
from sqlalchemy.orm import Session

from expert_pipeline.core.db import rows_affected
from expert_pipeline.core.models import ApiToken, Expert, StreamTicket, utcnow

TOKEN_PREFIX = "ep_"
TICKET_PREFIX = "st_"
STREAM_TICKET_SECONDS = 60

INVALID = "The API token is not valid."
EXPIRED = "The API token has expired."
REVOKED = "The API token has been revoked."
BAD_TICKET = (
    "The stream ticket is not valid (tickets are single-use and expire after "
    f"{STREAM_TICKET_SECONDS} s): get a new one from POST /api/stream-tickets."
)


class Refused(Exception):
    """A credential that is not accepted; the message is what the client is told."""


# last_used_at is written at most this often per token (not a write per request).
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str | None
    operator: bool = False
    # The token it authenticated with (None: local mode), so a stream can be ended on revocation.
    token_id: str | None = None

    def sees(self, owner: str | None) -> bool:
        """Whether an expert with this owner (None: no owner or no expert row) is visible."""
        return self.operator or (self.owner is not None and owner == self.owner)


LOCAL_PRINCIPAL = Principal(owner=None, operator=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    db: Session,
    owner: str,
    operator: bool = False,
    *,
    expires_in: timedelta | None = None,
    email: str | None = None,
) -> str:
    """Store a new token for `owner` and return its plaintext (shown once, never stored)."""
    owner = (owner or "").strip()
    if not owner:
        raise ValueError("a token needs an owner")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    db.add(
        ApiToken(
            owner=owner,
            token_sha256=hash_token(token),
            operator=operator,
            expires_at=expires_at,
            email=(email or "").strip() or None,
        )
    )
    db.commit()
    return token


def refusal(row: ApiToken, now: datetime | None = None) -> str | None:
    """Why a known token is not accepted (revoked, expired), or None when it is."""
    if row.revoked_at is not None:
        return REVOKED
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return EXPIRED
    return None


def principal_of(row: ApiToken) -> Principal:
    """Who a known, accepted token speaks for."""
    return Principal(owner=row.owner, operator=bool(row.operator), token_id=row.id)


def check_token(db: Session, token: str) -> Principal:
    """The token's principal; `Refused` (saying why) when it is unknown, expired or revoked."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token))) if token else None
    if row is None:
        raise Refused(INVALID)
    now = utcnow()
    reason = refusal(row, now)
    if reason is not None:
        raise Refused(reason)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        db.commit()
    return principal_of(row)


def authenticate(db: Session, token: str | None) -> Principal | None:
    """The token's principal, or None when it is unknown, expired or revoked."""
    if not token:
        return None
    try:
        return check_token(db, token)
    except Refused:
        return None


def revoke_token(db: Session, id_or_prefix: str) -> ApiToken:
    """Revoke one token, named by its id, a unique prefix of its id, or the token itself.
    `LookupError` (with a message) when none or several match. Revoking twice is harmless."""
    key = (id_or_prefix or "").strip()
    if not key:
        raise LookupError("name the token to revoke: its id (or the start of it), as `tokens list` shows")
    if key.startswith(TOKEN_PREFIX):
        rows = list(db.scalars(select(ApiToken).where(ApiToken.token_sha256 == hash_token(key))))
    else:
        rows = list(db.scalars(select(ApiToken).where(ApiToken.id.startswith(key, autoescape=True))))
        exact = [r for r in rows if r.id == key]
        rows = exact or rows
    if not rows:
        raise LookupError(f"no API token matches {key!r}")
    if len(rows) > 1:
        raise LookupError(
            f"{key!r} matches {len(rows)} tokens ({', '.join(r.id for r in rows)}): give more of the id"
        )
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.commit()
    return row


def valid_token_ids(db: Session, token_ids: Collection[str]) -> set[str]:
    """Which of these tokens are still accepted (exist, not revoked, not expired)."""
    if not token_ids:
        return set()
    now = utcnow()
    query = select(ApiToken.id).where(
        ApiToken.id.in_(list(token_ids)),
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
    )
    return set(db.scalars(query))


def issue_stream_ticket(db: Session, principal: Principal) -> str:
    """A single-use ticket that opens one live stream as `principal` within
    `STREAM_TICKET_SECONDS`; only its hash is stored. Expired tickets are swept here."""
    ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    db.execute(delete(StreamTicket).where(StreamTicket.expires_at <= now))
    db.add(
        StreamTicket(
            ticket_sha256=hash_token(ticket),
            token_id=principal.token_id,
            expires_at=now + timedelta(seconds=STREAM_TICKET_SECONDS),
        )
    )
    db.commit()
    return ticket


def redeem_stream_ticket(db: Session, ticket: str) -> Principal:
    """The principal a ticket was issued to; the ticket is used up (deleted) here, and only the
    worker whose DELETE removed the row may use it. `Refused` when unknown, used, expired, or
    its token is no longer accepted (a local-mode ticket: once a token exists)."""
    digest = hash_token(ticket)
    row = db.get(StreamTicket, digest) if ticket else None
    if row is None:
        raise Refused(BAD_TICKET)
    deleted = rows_affected(db, delete(StreamTicket).where(StreamTicket.ticket_sha256 == digest))
    db.commit()
    now = utcnow()
    if deleted != 1 or row.expires_at <= now:
        raise Refused(BAD_TICKET)
    if row.token_id is None:
        if any_tokens(db):
            raise Refused(BAD_TICKET)
        return LOCAL_PRINCIPAL
    token = db.get(ApiToken, row.token_id)
    if token is None:
        raise Refused(BAD_TICKET)
    reason = refusal(token, now)
    if reason is not None:
        raise Refused(reason)
    return principal_of(token)


# Built once: local mode asks this on every request, and building and keying a statement
# costs more than SQLite takes to answer it.
_ANY_TOKEN = select(ApiToken.id).limit(1)


def any_tokens(db: Session) -> bool:
    return db.scalar(_ANY_TOKEN) is not None


def list_tokens(db: Session) -> list[ApiToken]:
    return list(db.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def visible_expert_ids(principal: Principal) -> Select[str] | None:
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
