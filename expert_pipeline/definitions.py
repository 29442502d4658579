"""The Dagster code location (workspace.yaml, `dagster dev`, `dg`): the ingest job and its
assets, the automation around it, and the resources for the parts in use."""

from __future__ import annotations

import dagster as dg

from expert_pipeline.adapters.factory import check_parts
from expert_pipeline.adapters.parts_description import log_parts
from expert_pipeline.assets import INGEST_ASSETS
from expert_pipeline.automation.definitions import automation_definitions
from expert_pipeline.core.settings import Settings, get_settings
from expert_pipeline.jobs import ingest_job
from expert_pipeline.resources.parts import build_resources, part_kinds


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The definitions for `settings`; builds objects only (no files, tables or connections)."""
    settings = settings or get_settings()
    kinds = part_kinds(settings)
    # The UI shows the technology actually in use (s3 or filesystem, openai or pytorch, ...).
    assets = dg.map_asset_specs(
        lambda spec: (
            spec.replace_attributes(kinds={"python", *kinds[spec.key.to_user_string()]})
            if spec.key.to_user_string() in kinds
            else spec
        ),
        INGEST_ASSETS,
    )
    return dg.Definitions.merge(
        dg.Definitions(assets=assets, jobs=[ingest_job]),
        automation_definitions(settings),
        dg.Definitions(resources=build_resources(settings)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Built when Dagster loads the code location. A half-configured part stops it here with
    # what is missing; tables are migrated by `expert-pipeline up` / `migrate` and the API.
    settings = get_settings()
    settings.ensure_dirs()
    check_parts(settings)
    log_parts(settings)
    return build_definitions(settings)
