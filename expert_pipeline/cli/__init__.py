"""`expert-pipeline` command line: migrate, run the servers, ingest from a terminal."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _cmd_migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    print("progress database is at the newest schema")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from expert_pipeline.cli.up import run_servers

    return run_servers(api_only=args.api_only, verbose=args.verbose)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from expert_pipeline.cli.ingest import ingest_files

    return ingest_files(name=args.name, paths=args.files, agent_id=args.agent_id, verbose=args.verbose)


def _cmd_worker(args: argparse.Namespace) -> int:
    from expert_pipeline.cli.worker import run_worker

    return run_worker(
        queues=args.queues,
        concurrency=args.concurrency,
        name=args.name,
        loglevel=args.loglevel,
        max_memory_mb=args.max_memory_mb,
    )


def _tokens_session() -> Session:
    from sqlalchemy.orm import Session

    from expert_pipeline.core.db import engine_for

    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    return Session(engine_for(settings.resolved_database_url), expire_on_commit=False)


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """ "30d", "12h", "90m", "2w", "45s" -> a timedelta (argparse type: a clear error otherwise)."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m, 2w or 45s")
    return timedelta(**{_DURATION_UNITS[match.group(2).lower()]: int(match.group(1))})


def _email(text: str) -> str:
    value = (text or "").strip()
    if len(value) > 320 or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not an email address")
    return value


def _when(value: datetime | None, never: str) -> str:
    return value.isoformat(timespec="seconds") if value is not None else never


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    from expert_pipeline.core.auth import create_token

    owner = (args.owner or "").strip()
    if not owner:
        print("--owner must not be empty", file=sys.stderr)
        return 2
    with _tokens_session() as db:
        token = create_token(db, owner, operator=args.operator, expires_in=args.expires_in, email=args.email)
    kind = "operator token" if args.operator else "token"
    print(f"API {kind} for {owner}:")
    print(token)
    if args.expires_in is not None:
        print(f"It expires at {_when(datetime.now(UTC) + args.expires_in, '')}.")
    print("Store it now: it will not be shown again (only its hash is kept).")
    return 0


def _cmd_tokens_list(_: argparse.Namespace) -> int:
    from expert_pipeline.core.auth import list_tokens, refusal

    with _tokens_session() as db:
        rows = list_tokens(db)
    if not rows:
        print("no API tokens: the status API runs in local mode (this machine only)")
        return 0
    now = datetime.now(UTC)
    print(
        f"{'ID':36s} {'OWNER':20s} {'OPERATOR':8s} {'STATE':8s} {'CREATED':25s} {'LAST USED':25s} {'EXPIRES':25s} EMAIL"
    )
    for row in rows:
        reason = refusal(row, now)
        state = "revoked" if row.revoked_at is not None else "expired" if reason else "active"
        print(
            f"{row.id:36s} {row.owner:20s} {'yes' if row.operator else 'no':8s} {state:8s} "
            f"{_when(row.created_at, ''):25s} {_when(row.last_used_at, 'never'):25s} "
            f"{_when(row.expires_at, 'never'):25s} {row.email or ''}"
        )
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from expert_pipeline.core.auth import revoke_token

    with _tokens_session() as db:
        try:
            row = revoke_token(db, args.token)
        except LookupError as error:
            print(str(error), file=sys.stderr)
            return 2
    print(
        f"revoked token {row.id} of {row.owner} (at {_when(row.revoked_at, '')}); its open streams end within 30 s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expert-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_cmd_migrate)
    up = sub.add_parser("up", help="run the status API, Dagster UI and daemon on embedded defaults")
    up.add_argument("--api-only", action="store_true", help="run only the status API")
    up.add_argument(
        "--verbose", action="store_true", help="show the servers' whole output, not only warnings and errors"
    )
    up.set_defaults(func=_cmd_up)
    ingest = sub.add_parser("ingest", help="ingest files into a new expert in this process")
    ingest.add_argument("--name", required=True)
    ingest.add_argument("--agent-id", default=None)
    ingest.add_argument(
        "--verbose", action="store_true", help="show Dagster's event log instead of the progress bar"
    )
    ingest.add_argument("files", nargs="+")
    ingest.set_defaults(func=_cmd_ingest)
    worker = sub.add_parser("worker", help="run ingest steps on this host (EXECUTOR=celery)")
    worker.add_argument(
        "--queues", default="ingest,embed", help="comma-separated queues to take steps from (ingest, embed)"
    )
    worker.add_argument(
        "--concurrency", type=int, default=1, help="steps at once; each is a process, so this bounds memory"
    )
    worker.add_argument("--name", default="worker", help="the worker's name (shown as NAME@host)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument(
        "--max-memory-mb", type=int, default=None, help="replace a step process that grew past this"
    )
    worker.set_defaults(func=_cmd_worker)
    tokens = sub.add_parser("tokens", help="manage status API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="create a token (printed once)")
    create.add_argument("--owner", required=True, help="who the token belongs to; their experts are theirs")
    create.add_argument("--operator", action="store_true", help="the token sees and acts on every expert")
    create.add_argument(
        "--expires-in",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="refuse the token after this long: 30d, 12h, 90m, 2w (default: never)",
    )
    create.add_argument("--email", type=_email, default=None, help="where the owner's completion mail goes")
    create.set_defaults(func=_cmd_tokens_create)
    tokens_sub.add_parser(
        "list", help="list tokens: id, owner, state, expiry (never the tokens themselves)"
    ).set_defaults(func=_cmd_tokens_list)
    revoke = tokens_sub.add_parser("revoke", help="revoke a token at once (its open streams end within 30 s)")
    revoke.add_argument(
        "token", help="the token's id as `tokens list` shows it, a unique start of it, or the token"
    )
    revoke.set_defaults(func=_cmd_tokens_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A person reads this console: warnings and errors, not every migration step or library note.
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
