"""The OpenAPI document is the API's contract: schemathesis, with every check and every phase
(explicit examples, coverage, fuzzing, and stateful sequences that create, read, retry, cancel
and delete experts), finds nothing the server does that the document does not say.

The CLI equivalent: `schemathesis run <url>/openapi.json -c all --phases
examples,coverage,fuzzing,stateful`. It runs against the app on a loopback socket
(127.0.0.1, Host 127.0.0.1:port), which local mode (no API tokens) serves; answers from the auth
gate (401/403/503) and the size limit (413) are in the document too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer

PHASES = ("examples", "coverage", "fuzzing", "stateful")
# Bounded to about a minute and a half on two shared cores.
MAX_EXAMPLES = 50
# The live streams of pending experts never end: each is read for a second; every other
# request has the whole default allowance.
CONFIG = """
request-timeout = 30

[[operations]]
include-path-regex = "/progress/stream$"
request-timeout = 1
"""


def _run_report(report: Path) -> tuple[Counter[str], Counter[int], Counter[str]]:
    """Cases per phase, response statuses, and responses per operation from the NDJSON report."""
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations: Counter[str] = Counter()
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        cases[finished["phase"]] += len(recorder.get("cases") or {})
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response")
            if response:
                statuses[response["status_code"]] += 1
                request = interaction.get("request") or {}
                path = urlsplit(request.get("uri", "")).path
                operations[f"{request.get('method')} {path} {response['status_code']}"] += 1
    return cases, statuses, operations


def test_the_api_keeps_its_openapi_contract(tmp_path: Path) -> None:
    # No pipeline runs here, so experts the fuzzer creates stay pending; after the stall
    # allowance /healthz would rightly answer 503 (documented, but a 5xx to `not_a_server_error`).
    settings = Settings(expert_pipeline_home=tmp_path / "home", stall_after_seconds=3600)
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    cli = Path(sys.executable).parent / "schemathesis"
    reports = tmp_path / "report"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with LiveServer(create_app(settings)) as server:
        assert urlsplit(server.url).hostname == "127.0.0.1"  # a loopback peer and Host: local mode serves it
        result = subprocess.run(
            [
                str(cli), "--config-file", str(config), "run", f"{server.url}/openapi.json",
                "--checks", "all", "--phases", ",".join(PHASES),
                "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--workers", "1",
                "--report", "ndjson", "--report-dir", str(reports),
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]

    cases, statuses, operations = _run_report(next(reports.glob("*.ndjson")))
    print(f"schemathesis: {sum(cases.values())} cases by phase {dict(cases)}; statuses {dict(sorted(statuses.items()))}")
    assert all(cases[phase] > 0 for phase in PHASES), cases
    # The gate let the fuzzer in (no 403), and the upload form as documented creates experts,
    # which the stateful phase then reads, retries, cancels and deletes.
    assert 403 not in statuses, statuses
    assert operations["POST /api/experts 201"] > 0, operations
