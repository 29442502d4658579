"""Stage 3 (embedding): embed every chunk in batches, reporting progress once per batch."""

import itertools
import math
import time

import dagster as dg

from expert_pipeline.adapters.service_trouble import ServiceUnavailable, TroubleEpisodes
from expert_pipeline.assets.chunks import expert_chunks
from expert_pipeline.assets.context import stage_run
from expert_pipeline.core.embedding_cache import EmbeddingCache, embed_with_cache
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.core.ports import Embedder
from expert_pipeline.ingest.embedding_prefetch import PROVIDER_TROUBLE_NOTE
from expert_pipeline.ingest.progress_plan import RateEstimator, overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestFailed, ProgressReporter


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python", "pytorch"},
    deps=[expert_chunks],
    pool="embedding_provider",
    # With EXECUTOR=celery: the embed queue, whose workers' concurrency respects the provider.
    op_tags={"dagster-celery/queue": "embed"},
    description="An embedding vector per chunk, computed in batches (local all-MiniLM-L6-v2 by "
    "default, OpenAI in production) and streamed to the work area.",
)
def expert_embeddings(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    embedder: dg.ResourceParam[Embedder],
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    all_files = catalog.files(run.expert_id)
    batch_size = ingest_settings.embedding_batch_size
    todo = [
        (i, f, run.work.count_chunks(f.id)) for i, f in enumerate(all_files) if f.status == FileStatus.PENDING
    ]
    total_chunks = sum(n for _, _, n in todo)
    total_batches = sum(math.ceil(n / batch_size) for _, _, n in todo)
    batch = done = processed = 0
    with run.progress.guard("Embedding"):
        run.progress.stage(
            Stage.EMBEDDING,
            overall_percentage(Stage.EMBEDDING, 0, 1),
            current_batch=0,
            total_batches=total_batches,
            current_chunk=0,
            total_chunks=total_chunks,
        )
        load_seconds = embedder.warm_up()
        # The ETA covers what is left of the whole ingest: embedding at the measured rate, then
        # storing vectors, which took this long for recent experts (nothing without history).
        storage_seconds = catalog.recent_stage_seconds(Stage.PINECONE_STORAGE) or 0.0
        cache = EmbeddingCache(
            catalog.engine,
            embedder.model_name,
            embedder.dimensions,
            on_outage_recovered=run.progress.database_recovered,
        )
        rate = RateEstimator()
        rate.observe(time.monotonic(), 0)
        encode_seconds = 0.0
        from_cache = 0
        episodes = TroubleEpisodes("embedding provider", "batches")
        episodes.carry_on(run.work.read_note(PROVIDER_TROUBLE_NOTE))  # from batches embedded ahead
        for index, item, _ in todo:
            run.work.start_embeddings(item.id)
            chunk_iter = run.work.read_chunks(item.id)
            while texts := [c.text for c in itertools.islice(chunk_iter, batch_size)]:
                started = run.seconds()
                try:
                    vectors = embed_with_cache(embedder, cache, texts)
                except ServiceUnavailable as exc:
                    run.note(episodes.after_step(embedder.take_trouble(), failed=True))
                    # The detail (endpoint, request) stays in the run's log; users get what happened
                    # and that a retry will not pay again for the chunks already embedded (cached).
                    context.log.error(str(exc))
                    raise IngestFailed(
                        f"Embedding failed: the {exc.service} {exc.answer}. {done} of {total_chunks} "
                        "chunks were embedded and are kept; retry to embed the rest"
                    ) from exc
                except BaseException:
                    run.note(episodes.after_step(embedder.take_trouble(), failed=True))
                    raise
                if vectors.fresh:  # a batch all from the cache asked no provider: not a step of an episode
                    run.note(episodes.after_step(embedder.take_trouble()))
                from_cache += len(texts) - vectors.fresh
                encode_seconds += run.seconds() - started
                run.work.append_embeddings(item.id, vectors.array)
                batch += 1
                done += len(texts)
                # The rate counts embedded chunks only: those embedded ahead while reading (or by
                # an earlier run) come first and at once, and would make the ETA promise seconds
                # for the chunks still to be embedded.
                if vectors.fresh:
                    rate.observe(time.monotonic(), done - from_cache)
                else:
                    rate.pause(time.monotonic())
                run.progress.update(
                    overall_percentage(Stage.EMBEDDING, done, total_chunks),
                    current_file=item.filename,
                    current_file_index=index,
                    current_batch=batch,
                    total_batches=total_batches,
                    current_chunk=done,
                    total_chunks=total_chunks,
                    eta_seconds=_plus(rate.eta(total_chunks - done), storage_seconds),
                    chunks_per_second=rate.rate,
                    details={
                        "filename": item.filename,
                        "batch": f"{batch}/{total_batches}",
                        "chunks": f"{done}/{total_chunks}",
                    },
                    force=batch == total_batches,
                )
            processed += 1
            run.progress.update(
                overall_percentage(Stage.EMBEDDING, done, total_chunks), processed_files=processed
            )
        run.note(episodes.close())
    return dg.MaterializeResult(
        metadata=run.metadata(
            chunks=done,
            batches=batch,
            model=embedder.model_name,
            encoder_backend=getattr(embedder, "backend_in_use", "provider"),
            dimensions=embedder.dimensions,
            chunks_from_cache=from_cache,
            chunks_sent_to_provider=done - from_cache,
            model_load_seconds=round(load_seconds, 3),
            encode_seconds=round(encode_seconds, 3),
            chunks_per_second=round(done / encode_seconds, 2) if encode_seconds else 0.0,
        )
    )


def _plus(eta: float | None, tail: float) -> float | None:
    return None if eta is None else eta + tail
