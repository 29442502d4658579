import dagster as dg

from expert_pipeline.partitions import experts

# In-process executor: the steps run one after another in the run's own process, so the
# embedding model is loaded once per run and no step pays a process start-up (~5 s with
# torch). The stages are strictly sequential anyway, so there is no parallelism to lose.
ingest_job = dg.define_asset_job(
    name="ingest_expert",
    selection=dg.AssetSelection.groups("ingest"),
    partitions_def=experts,
    executor_def=dg.in_process_executor,
    description="Ingest one expert (one partition): fetch, extract, chunk, embed, store vectors.",
)
