import dagster as dg


class MaintenanceSettings(dg.ConfigurableResource):
    """Retention of finished progress records; built from the product's settings object."""

    completed_retention_days: float = 30.0
    failed_retention_days: float = 90.0
