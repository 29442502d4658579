"""Stage 4 (pinecone_storage): store the vectors in the expert's namespace, then complete."""

import dagster as dg

from expert_pipeline.assets.context import stage_run
from expert_pipeline.assets.embeddings import expert_embeddings
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.core.ports import Embedder, VectorRecord, VectorStore, vector_id
from expert_pipeline.core.progress_public import stage_label
from expert_pipeline.ingest.progress_plan import overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestFailed, ProgressReporter

VECTOR_COUNT_CHECK = "vector_count_matches_chunks"


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python", "lancedb"},
    deps=[expert_embeddings],
    check_specs=[
        dg.AssetCheckSpec(
            VECTOR_COUNT_CHECK,
            asset="expert_vectors",
            description="The expert's namespace holds exactly one vector per chunk.",
        )
    ],
    description="The expert's vectors in its own namespace of the vector store (embedded "
    "LanceDB by default, Pinecone in production), with deterministic ids so a re-run never "
    "duplicates. Marks the expert completed.",
)
def expert_vectors(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    embedder: dg.ResourceParam[Embedder],
    vector_store: dg.ResourceParam[VectorStore],
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    all_files = catalog.files(run.expert_id)
    todo = [(i, f) for i, f in enumerate(all_files) if f.status == FileStatus.PENDING]
    already = [f for f in all_files if f.status == FileStatus.INDEXED]
    new_chunks = sum(run.work.count_chunks(f.id) for _, f in todo)
    total_chunks = new_chunks + sum(f.chunks or 0 for f in already)
    batch_size = ingest_settings.upsert_batch_size
    stored = 0
    with run.progress.guard(stage_label(Stage.PINECONE_STORAGE)):
        run.progress.stage(
            Stage.PINECONE_STORAGE,
            overall_percentage(Stage.PINECONE_STORAGE, 0, 1),
            current_chunk=0,
            total_chunks=new_chunks,
        )
        for index, item in todo:
            vectors = run.work.read_embeddings(item.id, embedder.dimensions)
            batch: list[VectorRecord] = []
            for chunk in run.work.read_chunks(item.id):
                batch.append(
                    VectorRecord(
                        id=vector_id(run.expert_id, item.id, chunk.index),
                        values=vectors[chunk.index].tolist(),
                        metadata={
                            "expert_id": run.expert_id,
                            "file_id": item.id,
                            "filename": item.filename,
                            "page": chunk.page,
                            "page_end": chunk.page_end if chunk.page_end is not None else chunk.page,
                            "chunk_index": chunk.index,
                            "text": chunk.text,
                        },
                    )
                )
                if len(batch) >= batch_size:
                    stored += vector_store.upsert(run.expert_id, batch)
                    batch = []
                    run.progress.update(
                        overall_percentage(Stage.PINECONE_STORAGE, stored, new_chunks),
                        current_file=item.filename,
                        current_file_index=index,
                        current_chunk=stored,
                    )
            if batch:
                stored += vector_store.upsert(run.expert_id, batch)
            catalog.set_file(item.id, status=FileStatus.INDEXED)
            run.progress.event(
                f"{item.filename} indexed", {"filename": item.filename, "chunks": item.chunks or 0}
            )
            run.progress.update(
                overall_percentage(Stage.PINECONE_STORAGE, stored, new_chunks),
                current_file=item.filename,
                current_file_index=index,
                current_chunk=stored,
            )
        if not todo and not already:
            raise IngestFailed("No file could be indexed")
        in_store = vector_store.count(run.expert_id)
        failed = [f for f in catalog.files(run.expert_id) if f.status == FileStatus.FAILED]
        run.progress.update(
            overall_percentage(Stage.PINECONE_STORAGE, stored, new_chunks),
            force=True,
            processed_files=len(todo) + len(already),
            failed_files=len(failed),
        )
        run.progress.completed(
            metadata={
                "files_indexed": len(todo) + len(already),
                "files_failed": len(failed),
                "chunks": total_chunks,
                "vectors": in_store,
            }
        )
    # Done: the stages' hand-over files (of this run, and of earlier runs that failed) go.
    run.work.remove_expert()
    return dg.MaterializeResult(
        metadata=run.metadata(
            vectors=stored, vectors_in_store=in_store, files_indexed=len(todo) + len(already)
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name=VECTOR_COUNT_CHECK,
                passed=in_store == total_chunks,
                metadata={"vectors_in_store": in_store, "chunks": total_chunks},
            )
        ],
    )
