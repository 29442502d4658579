"""Running the real ingest job for one expert, in process, against test settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from sqlalchemy.orm import Session

from expert_pipeline.core import experts_service
from expert_pipeline.core.db import engine_for
from expert_pipeline.core.experts_service import Upload, UploadLimits
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from expert_pipeline.definitions import build_definitions
from expert_pipeline.adapters.factory import build_file_storage
from expert_pipeline.partitions import experts

ANY_TYPE = UploadLimits(
    max_files=1000, max_file_bytes=10**9, max_total_bytes=10**10,
    allowed_extensions=frozenset({".pdf", ".txt", ".md", ".html", ".docx", ".xyz", ".bin"}),
)


def create_expert(settings: Settings, paths: Sequence[Path], name: str = "Test expert") -> str:
    engine = engine_for(settings.resolved_database_url)
    handles = [open(p, "rb") for p in paths]
    try:
        with Session(engine, expire_on_commit=False) as session:
            expert, _ = experts_service.create_expert(
                session, build_file_storage(settings), name=name,
                uploads=[Upload(p.name, h) for p, h in zip(paths, handles, strict=True)], limits=ANY_TYPE,
            )
    finally:
        for handle in handles:
            handle.close()
    return expert.id


@dataclass
class ProgressWatcher:
    """Polls the progress row while a run works, as a dashboard would, recording each state."""

    settings: Settings
    expert_id: str
    samples: list[tuple[str, str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        engine = engine_for(self.settings.resolved_database_url)
        while not self._stop.is_set():
            self.sample(engine)
            time.sleep(0.01)
        self.sample(engine)

    def sample(self, engine: object) -> None:
        with Session(engine) as session:  # type: ignore[arg-type]
            record = ExpertProcessingProgressService(session).get_progress(self.expert_id)
            if record is not None:
                state = (record.stage, record.status, record.progress_percentage)
                if not self.samples or self.samples[-1] != state:
                    self.samples.append(state)

    @contextmanager
    def watching(self) -> Iterator[ProgressWatcher]:
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)


def run_ingest(
    settings: Settings,
    expert_id: str,
    instance: dg.DagsterInstance,
    *,
    resources: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """The ingest job for one expert's partition, in process; `resources` replace the job's own
    (a counting or broken part), `tags` are the run's (a run key, a parent run)."""
    if expert_id not in instance.get_dynamic_partitions(experts.name):
        instance.add_dynamic_partitions(experts.name, [expert_id])
    job = build_definitions(settings).resolve_job_def("ingest_expert")
    return job.execute_in_process(
        partition_key=expert_id, instance=instance, raise_on_error=False,
        resources=dict(resources) if resources else None, tags=dict(tags) if tags else None,
    )
