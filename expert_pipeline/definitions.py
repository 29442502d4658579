"""The Dagster code location (workspace.yaml, `dagster dev`, `dg`): the ingest job and its
assets, the automation around it, and the resources for the parts in use."""

from __future__ import annotations

import dagster as dg

from expert_pipeline.assets import INGEST_ASSETS
from expert_pipeline.automation.definitions import automation_definitions
from expert_pipeline.core.db import migrate
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.jobs import ingest_job
from expert_pipeline.parts import build_resources, check_parts, log_parts


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    settings.ensure_dirs()
    check_parts(settings)
    log_parts(settings)
    migrate(settings.resolved_database_url)
    return dg.Definitions.merge(
        dg.Definitions(assets=INGEST_ASSETS, jobs=[ingest_job]),
        automation_definitions(settings),
        dg.Definitions(resources=build_resources(settings)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Built when Dagster loads the code location, not when this module is imported.
    return build_definitions()
