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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
