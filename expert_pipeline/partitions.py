import dagster as dg

# One partition per expert; the key is the expert id. Partitions are added by the sensor
# that notices new experts, and removed by the cleanup job when an expert is deleted.
EXPERTS = "experts"
experts = dg.DynamicPartitionsDefinition(name=EXPERTS)
