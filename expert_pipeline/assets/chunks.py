"""Stage 2 (text_extraction): read every fetched file and cut its text into chunks, streaming.

Each file's pages are extracted in a bounded worker process and chunked here as the worker
writes them; with `embed_while_reading` every full batch of chunks is also embedded on a
background thread into the embedding cache, so the embedding step finds them done. Reading,
chunking and embedding thus overlap (pages -> chunks -> batches) while the stages keep their
order and their progress.

A file that cannot be read (encrypted, corrupt, image-only, empty, unsupported, or beyond the
time and memory bounds of the extraction worker) fails alone with its reason recorded; the
other files go on.
"""

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import dagster as dg

from expert_pipeline.adapters.service_trouble import TroubleEpisodes
from expert_pipeline.assets.context import StageRun, stage_run
from expert_pipeline.assets.files import expert_files
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.core.ports import Embedder
from expert_pipeline.core.progress_service import OPERATOR_DETAIL
from expert_pipeline.ingest.embedding_prefetch import PROVIDER_TROUBLE_NOTE, EmbeddingPrefetch
from expert_pipeline.ingest.progress_plan import RateEstimator, ocr_eta, overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.extraction_worker import ExtractionWorker
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestCancelled, IngestFailed, ProgressReporter
from expert_pipeline.text.chunking import chunk_pages
from expert_pipeline.text.extraction import ExtractionError, PageText

# Small batches ahead: the step ends by waiting for the one in flight, during which the bar rests.
AHEAD_BATCH = 16
UNREADABLE_REASON = "could not be read: it is damaged, or uses a format feature we cannot parse"


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python", "pdf"},
    deps=[expert_files],
    description="Page text of each file (PDF via pypdf with OCR for scans, plain text, Markdown, "
    "HTML, DOCX), read in a bounded worker process and cut as it arrives into overlapping "
    "chunks within the embedding model's token limit, each keeping its file name and pages; "
    "full batches are embedded ahead into the embedding cache. Unreadable files fail alone "
    "with a reason; the expert fails here, naming the files, if no file yielded any text.",
)
def expert_chunks(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    embedder: dg.ResourceParam[Embedder],
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
    extraction_worker: ExtractionWorker,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    all_files = catalog.files(run.expert_id)
    total = len(all_files)
    failed = sum(1 for f in all_files if f.status == FileStatus.FAILED)
    max_tokens = min(ingest_settings.chunk_max_tokens, embedder.max_input_tokens)
    pages = characters = chunks = tokens = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(run.progress.guard("Text extraction"))
        extractor = stack.enter_context(extraction_worker.reading())
        ahead = (
            stack.enter_context(
                EmbeddingPrefetch(
                    embedder, catalog.engine, min(AHEAD_BATCH, ingest_settings.embedding_batch_size)
                )
            )
            if ingest_settings.embed_while_reading
            else None
        )
        episodes = TroubleEpisodes("embedding provider", "batches")

        def note_provider_retries() -> None:
            # The retries of batches embedded ahead, told as the embedding step tells its own.
            for counts in ahead.take_batch_trouble() if ahead else []:
                run.note(episodes.after_step(counts))

        run.progress.stage(Stage.TEXT_EXTRACTION, overall_percentage(Stage.TEXT_EXTRACTION, 0, 1))
        for index, item in enumerate(all_files):
            if item.status != FileStatus.PENDING:
                continue
            run.progress.update(
                overall_percentage(Stage.TEXT_EXTRACTION, index, total),
                current_file=item.filename,
                current_file_index=index,
                details={"filename": item.filename},
            )
            read = _PagesRead()
            stream = extractor.stream(
                run.work,
                item.id,
                run.work.fetched_path(item.id, item.filename),
                item.filename,
                _ocr_reporter(run, catalog, item.filename, index, total),
            )
            file_chunks = chunk_pages(
                read.counting(stream),
                item.filename,
                count_tokens=embedder.count_tokens,
                max_tokens=max_tokens,
                overlap_tokens=ingest_settings.chunk_overlap_tokens,
            )
            detail: str | None = None
            kind: str
            note_provider_retries()
            try:
                written, file_tokens = run.work.write_chunks(
                    item.id, ahead.passing(file_chunks) if ahead else file_chunks
                )
            except ExtractionError as exc:
                kind, reason = exc.kind, str(exc)
            except _ParserFailed as exc:  # a parser bug on one file must not sink the expert
                kind, reason = "unreadable", UNREADABLE_REASON
                detail = f"{exc.cause.__class__.__name__}: {exc.cause}"  # for operators only
                context.log.warning(f"{item.filename}: {detail}")
            else:
                if written:
                    if ahead:
                        ahead.flush()
                    pages += read.pages
                    characters += read.characters
                    chunks += written
                    tokens += file_tokens
                    catalog.set_file(item.id, pages=read.pages, characters=read.characters, chunks=written)
                    context.log.info(
                        f"{item.filename}: {read.characters} characters on {read.pages} pages, {written} chunks"
                    )
                    run.progress.update(
                        overall_percentage(Stage.TEXT_EXTRACTION, index + 1, total), total_chunks=chunks
                    )
                    continue
                kind, reason = "no_text", "no extractable text (scanned or image-only document?)"
            if ahead:
                ahead.discard()
            failed += 1
            catalog.fail_file(item.id, kind, reason)
            data = {"filename": item.filename, "kind": kind, **({OPERATOR_DETAIL: detail} if detail else {})}
            run.progress.event(f"{item.filename} failed: {reason}", data)
            run.progress.update(
                overall_percentage(Stage.TEXT_EXTRACTION, index + 1, total), failed_files=failed
            )
        if ahead:
            ahead.close()
            note_provider_retries()
            # The embedding step goes on with an episode still open: one story, not two.
            run.work.write_note(PROVIDER_TROUBLE_NOTE, episodes.open_episode())
        if chunks == 0 and not any(f.status == FileStatus.INDEXED for f in all_files):
            reasons = "; ".join(f"{f.filename}: {f.error_message}" for f in catalog.files(run.expert_id))
            raise IngestFailed(f"No file could be indexed. {reasons}")
    if ahead and ahead.stopped_by:
        context.log.info(f"Embedding ahead stopped ({ahead.stopped_by}); the embedding step does the rest")
    return dg.MaterializeResult(
        metadata=run.metadata(
            files=total,
            pages=pages,
            characters=characters,
            chunks=chunks,
            tokens=tokens,
            max_tokens=max_tokens,
            failed_files=failed,
            chunks_embedded_ahead=ahead.embedded if ahead else 0,
        )
    )


class _ParserFailed(Exception):
    """An unexpected error of the extraction, carried through the chunker to fail its file."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _PagesRead:
    """Counts the pages and characters streaming past, and tells parser bugs from our own."""

    def __init__(self) -> None:
        self.pages = 0
        self.characters = 0

    def counting(self, stream: Iterable[PageText]) -> Iterator[PageText]:
        try:
            for page in stream:
                self.pages += 1
                self.characters += len(page.text)
                yield page
        except (ExtractionError, IngestCancelled):
            raise  # a reason for the user, or the run cancelled while OCR reported a page
        except Exception as exc:
            raise _ParserFailed(exc) from exc


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
            overall_percentage(Stage.TEXT_EXTRACTION, index + done / pages, total),
            eta_seconds=ocr_eta(rate, pages - done, later[0]),
            # The key is cleared when the file is done: details outlive the stage otherwise.
            details={"filename": filename, "ocr": None if finished else f"OCR page {done} of {pages}"},
            force=finished,
        )

    return report
