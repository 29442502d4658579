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
    # A retried run (see run_retries in dagster.yaml) redoes every step: the stages hand data
    # over through the run's work area, which a retry on another machine would not have.
    tags={"dagster/retry_strategy": "ALL_STEPS"},
    description="Ingest one expert (one partition): fetch, extract, chunk, embed, store vectors.",
)
