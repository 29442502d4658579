"""`expert-pipeline` command line: migrate, run the servers, ingest from a terminal."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import get_settings


def _cmd_migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    print("progress database is at the newest schema")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from expert_pipeline.launcher import run_servers

    return run_servers(api_only=args.api_only)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from expert_pipeline.terminal_ingest import ingest_files

    return ingest_files(name=args.name, paths=args.files, agent_id=args.agent_id)


def _tokens_session():  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from expert_pipeline.core.db import engine_for

    settings = get_settings()
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    return Session(engine_for(settings.resolved_database_url), expire_on_commit=False)


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    from expert_pipeline.core.auth import create_token

    owner = (args.owner or "").strip()
    if not owner:
        print("--owner must not be empty", file=sys.stderr)
        return 2
    with _tokens_session() as db:
        token = create_token(db, owner, operator=args.operator)
    kind = "operator token" if args.operator else "token"
    print(f"API {kind} for {owner}:")
    print(token)
    print("Store it now: it will not be shown again (only its hash is kept).")
    return 0


def _cmd_tokens_list(_: argparse.Namespace) -> int:
    from expert_pipeline.core.auth import list_tokens

    with _tokens_session() as db:
        rows = list_tokens(db)
    if not rows:
        print("no API tokens: the status API runs in local mode (this machine only)")
        return 0
    print(f"{'OWNER':24s} {'OPERATOR':8s} {'CREATED':25s} LAST USED")
    for row in rows:
        last = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
        created = row.created_at.isoformat(timespec="seconds")
        print(f"{row.owner:24s} {'yes' if row.operator else 'no':8s} {created:25s} {last}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expert-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_cmd_migrate)
    up = sub.add_parser("up", help="run the status API, Dagster UI and daemon on embedded defaults")
    up.add_argument("--api-only", action="store_true", help="run only the status API")
    up.set_defaults(func=_cmd_up)
    ingest = sub.add_parser("ingest", help="ingest files into a new expert in this process")
    ingest.add_argument("--name", required=True)
    ingest.add_argument("--agent-id", default=None)
    ingest.add_argument("files", nargs="+")
    ingest.set_defaults(func=_cmd_ingest)
    tokens = sub.add_parser("tokens", help="manage status API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="create a token (printed once)")
    create.add_argument("--owner", required=True, help="who the token belongs to; their experts are theirs")
    create.add_argument("--operator", action="store_true", help="the token sees and acts on every expert")
    create.set_defaults(func=_cmd_tokens_create)
    tokens_sub.add_parser("list", help="list tokens (never the tokens themselves)").set_defaults(func=_cmd_tokens_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
