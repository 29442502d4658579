"""Stage 2, continued (text_extraction): split page text into chunks the embedder accepts."""

import dagster as dg

from expert_pipeline.adapters.embedder import Embedder
from expert_pipeline.assets.context import stage_run
from expert_pipeline.assets.text import EXTRACTION_SHARE, expert_text
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.ingest.progress_plan import overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestFailed, ProgressReporter
from expert_pipeline.text.chunking import chunk_pages


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python"},
    deps=[expert_text],
    description="Overlapping chunks within the embedding model's token limit, each keeping "
    "its file name and page number. The expert fails here, naming the files, if no file "
    "yielded any text.",
)
def expert_chunks(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    embedder: dg.ResourceParam[Embedder],
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    all_files = catalog.files(run.expert_id)
    total = len(all_files)
    failed = sum(1 for f in all_files if f.status == FileStatus.FAILED)
    max_tokens = min(ingest_settings.chunk_max_tokens, embedder.max_input_tokens)
    chunks = tokens = 0
    with run.progress.guard("Chunking"):
        for index, item in enumerate(all_files):
            if item.status != FileStatus.PENDING:
                continue
            file_chunks, file_tokens = run.work.write_chunks(
                item.id,
                chunk_pages(
                    run.work.read_pages(item.id),
                    item.filename,
                    count_tokens=embedder.count_tokens,
                    max_tokens=max_tokens,
                    overlap_tokens=ingest_settings.chunk_overlap_tokens,
                ),
            )
            if file_chunks == 0:
                failed += 1
                reason = "no extractable text (scanned or image-only document?)"
                catalog.fail_file(item.id, "no_text", reason)
                run.progress.event(
                    f"{item.filename} failed: {reason}", {"filename": item.filename, "kind": "no_text"}
                )
            else:
                catalog.set_file(item.id, chunks=file_chunks)
            chunks += file_chunks
            tokens += file_tokens
            done = EXTRACTION_SHARE * total + (1 - EXTRACTION_SHARE) * (index + 1)
            run.progress.update(
                overall_percentage(Stage.TEXT_EXTRACTION, done, total),
                failed_files=failed,
                total_chunks=chunks,
            )
        if chunks == 0 and not any(f.status == FileStatus.INDEXED for f in all_files):
            reasons = "; ".join(f"{f.filename}: {f.error_message}" for f in catalog.files(run.expert_id))
            raise IngestFailed(f"No file could be indexed. {reasons}")
    return dg.MaterializeResult(
        metadata=run.metadata(chunks=chunks, tokens=tokens, max_tokens=max_tokens, failed_files=failed)
    )
