"""The Dagster code location loaded by workspace.yaml, `dagster dev` and `dg`."""

from expert_pipeline.code_location import build_definitions

defs = build_definitions()
