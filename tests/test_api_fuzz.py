"""Fuzz the status API from its own OpenAPI document with schemathesis (bounded examples):
no response is a 5xx, and every response matches the documented schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer


def test_no_server_errors_and_responses_match_the_schema(tmp_path: Path) -> None:
    settings = Settings(expert_pipeline_home=tmp_path / "home")
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    cli = Path(sys.executable).parent / "schemathesis"
    with LiveServer(create_app(settings)) as server:
        result = subprocess.run(
            [str(cli), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error,response_schema_conformance",
             "--max-examples", "15", "--seed", "1", "--workers", "1"],
            capture_output=True, text=True, timeout=600,
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
