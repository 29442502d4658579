import dagster as dg

from expert_pipeline.core.run_requests import EXPERTS_PARTITIONS

# One partition per expert; the key is the expert id. Partitions are added by the sensor
# that notices new experts, and removed by the cleanup job when an expert is deleted.
EXPERTS = EXPERTS_PARTITIONS
experts = dg.DynamicPartitionsDefinition(name=EXPERTS)
