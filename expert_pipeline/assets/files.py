"""Stage 1 (file_processing): fetch the expert's uploaded files into the run's work area."""

import dagster as dg

from expert_pipeline.adapters.file_storage import FileStorage
from expert_pipeline.adapters.service_trouble import ServiceUnavailable, TroubleEpisodes, TroubleReport
from expert_pipeline.assets.context import StageRun, stage_run
from expert_pipeline.automation.run_records import PARENT_RUN_TAG, worker_death
from expert_pipeline.core.models import FileStatus, Stage
from expert_pipeline.ingest.progress_plan import overall_percentage
from expert_pipeline.partitions import experts
from expert_pipeline.resources.expert_catalog import ExpertCatalog
from expert_pipeline.resources.ingest_settings import IngestSettings
from expert_pipeline.resources.progress_reporter import IngestFailed, ProgressReporter


@dg.asset(
    partitions_def=experts,
    group_name="ingest",
    kinds={"python", "filesystem"},
    description="The expert's uploaded files, fetched from file storage (local folder or S3) "
    "into the run's work area. A file that cannot be fetched fails alone.",
)
def expert_files(
    context: dg.AssetExecutionContext,
    catalog: ExpertCatalog,
    file_storage: dg.ResourceParam[FileStorage],
    progress_reporter: ProgressReporter,
    ingest_settings: IngestSettings,
) -> dg.MaterializeResult:
    run = stage_run(context, ingest_settings, progress_reporter)
    files = catalog.files(run.expert_id)
    with run.progress.guard("Fetching files"):
        retry_of = context.run.tags.get(PARENT_RUN_TAG)
        # Dagster's retry may start before the failure sensor has told why: say it here.
        why = worker_death(context.instance, retry_of) if retry_of else None
        run.progress.start_run(context.run.run_id, total_files=len(files), retry_of=retry_of, why=why)
        if not files:
            raise IngestFailed("This expert has no files to process")
        catalog.retry_failed_files(run.expert_id)
        files = catalog.files(run.expert_id)
        indexed = sum(1 for f in files if f.status == FileStatus.INDEXED)
        run.progress.stage(
            Stage.FILE_PROCESSING, 0.0, "Fetching files", total_files=len(files), processed_files=indexed
        )
        fetched_bytes = failed = 0
        episodes = TroubleEpisodes("file storage", "files")
        for index, item in enumerate(files):
            if item.status == FileStatus.INDEXED:
                continue  # indexed by an earlier run; its vectors are in place
            try:
                fetched_bytes += file_storage.fetch(
                    item.storage_key, run.work.fetched_path(item.id, item.filename)
                )
            except Exception as exc:  # noqa: BLE001 - one unreachable file must not stop the others
                # What storage answered comes first in the history, then what it meant for the file.
                _note(run, episodes.after_step(file_storage.take_trouble(), failed=True), item.filename)
                failed += 1
                why = f"it {exc.answer}" if isinstance(exc, ServiceUnavailable) else str(exc)
                reason = f"could not be fetched from storage: {why}"
                catalog.fail_file(item.id, "fetch_failed", reason)
                run.progress.event(
                    f"{item.filename} failed: {reason}", {"filename": item.filename, "kind": "fetch_failed"}
                )
            else:
                _note(run, episodes.after_step(file_storage.take_trouble()), item.filename)
            run.progress.update(
                overall_percentage(Stage.FILE_PROCESSING, index + 1, len(files)),
                current_file=item.filename,
                current_file_index=index,
                failed_files=failed,
                details={"filename": item.filename},
            )
        _note(run, episodes.close(), None)
    return dg.MaterializeResult(
        metadata=run.metadata(
            files=len(files), already_indexed=indexed, bytes=fetched_bytes, failed_files=failed
        )
    )


def _note(run: StageRun, report: TroubleReport | None, filename: str | None) -> None:
    if report is None:
        return
    # A one-file episode names its file; a longer one spans several, counted in the message.
    filename = filename if report.steps == 1 else None
    where = f" (fetching {filename})" if filename else ""
    run.progress.event(report.message + where, report.data("storage_retries", filename=filename))
