"""Ingest logic that needs no Dagster: the work area stages hand data over in, and the
progress plan (how each stage's work maps to the overall percentage, the ETA)."""
