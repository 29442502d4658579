import dagster as dg


class MaintenanceSettings(dg.ConfigurableResource):
    """Retention and dead-run handling; built from the product's settings object."""

    completed_retention_days: float = 30.0
    failed_retention_days: float = 90.0
    dead_run_after_seconds: float = 180.0
    embedding_cache_retention_days: float = 180.0
