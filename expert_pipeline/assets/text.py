"""Stage 2 (text_extraction): extract page text from every fetched file.

A file that cannot be read (encrypted, corrupt, image-only, empty, unsupported, or beyond the
time and memory bounds of the extraction worker) fails alone with its reason recorded; the
other files go on.
"""

import time
from collections.abc import Callable

import dagster as dg

from expert_pipeline.assets.context import StageRun, stage_run
from expert_pipeline.assets.files import expert_files
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.core.progress_service import OPERATOR_DETAIL
from expert_pipeline.ingest.progress_plan import RateEstimator, ocr_eta, overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestCancelled, ProgressReporter
from expert_pipeline.text.extraction import ExtractionError
from expert_pipeline.text.isolated_extraction import ExtractionLimits, IsolatedExtractor

# Extraction is three quarters of the text_extraction stage; chunking is the rest.
EXTRACTION_SHARE = 0.75


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python", "pdf"},
    deps=[expert_files],
    description="Page text of each file (PDF via pypdf, plain text, Markdown, HTML, DOCX), "
    "streamed page by page to the work area. Unreadable files fail alone with a reason.",
)
def expert_text(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    all_files = catalog.files(run.expert_id)
    total = len(all_files)
    failed = sum(1 for f in all_files if f.status == FileStatus.FAILED)
    pages = characters = 0
    limits = ExtractionLimits(
        ingest_settings.extraction_timeout_seconds, ingest_settings.extraction_memory_mb
    )
    with run.progress.guard("Text extraction"), IsolatedExtractor(run.work, limits) as extractor:
        run.progress.stage(Stage.TEXT_EXTRACTION, overall_percentage(Stage.TEXT_EXTRACTION, 0, 1))
        for index, item in enumerate(all_files):
            if item.status != FileStatus.PENDING:
                continue
            run.progress.update(
                overall_percentage(Stage.TEXT_EXTRACTION, EXTRACTION_SHARE * index, total),
                current_file=item.filename,
                current_file_index=index,
                details={"filename": item.filename},
            )
            source = run.work.fetched_path(item.id, item.filename)
            detail: str | None = None
            kind: str
            on_ocr_page = _ocr_reporter(run, catalog, item.filename, index, total)
            try:
                extracted = extractor.extract(item.id, source, item.filename, on_ocr_page)
            except ExtractionError as exc:
                kind, reason = exc.kind, str(exc)
            except IngestCancelled:
                raise  # cancelled while OCR reported a page: the run stops, the file did nothing wrong
            except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not sink the expert
                kind, reason = (
                    "unreadable",
                    "could not be read: it is damaged, or uses a format feature we cannot parse",
                )
                detail = f"{exc.__class__.__name__}: {exc}"  # for operators: the history and the run's log
                context.log.warning(f"{item.filename}: {detail}")
            else:
                pages += extracted.pages
                characters += extracted.characters
                catalog.set_file(item.id, pages=extracted.pages, characters=extracted.characters)
                context.log.info(
                    f"Extracted {extracted.characters} characters from {item.filename} ({extracted.pages} pages)"
                )
                continue
            failed += 1
            catalog.fail_file(item.id, kind, reason)
            data = {"filename": item.filename, "kind": kind, **({OPERATOR_DETAIL: detail} if detail else {})}
            run.progress.event(f"{item.filename} failed: {reason}", data)
            run.progress.update(
                overall_percentage(Stage.TEXT_EXTRACTION, EXTRACTION_SHARE * (index + 1), total),
                failed_files=failed,
            )
    return dg.MaterializeResult(
        metadata=run.metadata(files=total, pages=pages, characters=characters, failed_files=failed)
    )


def _ocr_reporter(
    run: StageRun, catalog: ExpertCatalog, filename: str, index: int, total: int
) -> Callable[[int, int], None]:
    """Progress per OCR page ("OCR page 3 of 12"), the file's share of the bar, and an ETA."""
    rate = RateEstimator()
    rate.observe(time.monotonic(), 0)  # from the file's start: its text layer is read first
    later: list[float | None] = []  # recent embedding + storage seconds, looked up once

    def report(done: int, pages: int) -> None:
        rate.observe(time.monotonic(), done)
        if not later:
            embedding = catalog.recent_stage_seconds(Stage.EMBEDDING)
            storage = catalog.recent_stage_seconds(Stage.PINECONE_STORAGE)
            later.append(None if embedding is None else embedding + (storage or 0.0))
        finished = done >= pages
        run.progress.update(
            overall_percentage(Stage.TEXT_EXTRACTION, EXTRACTION_SHARE * (index + done / pages), total),
            eta_seconds=ocr_eta(rate, pages - done, later[0]),
            # The key is cleared when the file is done: details outlive the stage otherwise.
            details={"filename": filename, "ocr": None if finished else f"OCR page {done} of {pages}"},
            force=finished,
        )

    return report
