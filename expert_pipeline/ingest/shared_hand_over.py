"""Hand-over between stages through file storage, for steps that run on different hosts.

With EXECUTOR=celery each step may run on a host that has never seen the previous one, so
the run's work area cannot be the hand-over. Each step pulls what it reads from file storage
(S3 in production) into its own host's work area when it starts, and a success hook pushes
what it wrote, with a manifest (relative path -> size), when it ends:

    work/<expert_id>/<run_id>/<path in the work area>
    work/<expert_id>/<run_id>/manifests/<step>.json

The in-process executor never comes here: its steps share one work area.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from expert_pipeline.core.ports import FileMissing, FileStorage

if TYPE_CHECKING:
    from expert_pipeline.ingest.work_area import ExpertWorkArea
    from expert_pipeline.resources.progress_reporter import ExpertProgress

# What each step writes into the work area (a folder of it), and whose outputs it reads.
STEP_OUTPUTS = {
    "expert_files": "files",
    "expert_chunks": "chunks",
    "expert_embeddings": "embeddings",
}
STEP_INPUTS = {
    "expert_chunks": ("expert_files",),
    "expert_embeddings": ("expert_chunks",),
    "expert_vectors": ("expert_chunks", "expert_embeddings"),
}
LAST_STEP = "expert_vectors"
CELERY_WORKER_KEY = "Celery worker"  # dagster-celery's engine event metadata: the worker's node name


def worker_name() -> str:
    """The host a step runs on, as the expert's history shows it."""
    return socket.gethostname()


def runs_on_workers(context: dg.AssetExecutionContext) -> bool:
    return context.job_def.executor_def.name == "celery"


class HandOverMissing(Exception):
    """A step's outputs that the next step needs are not in file storage."""


class SharedHandOver:
    def __init__(self, storage: FileStorage, expert_id: str, run_id: str) -> None:
        self.storage = storage
        self.expert_prefix = f"work/{expert_id}"
        self.prefix = f"{self.expert_prefix}/{run_id}"

    def _manifest_key(self, step: str) -> str:
        return f"{self.prefix}/manifests/{step}.json"

    def pull(self, work: ExpertWorkArea, step: str) -> int:
        """Fetch the outputs of the steps `step` reads that this host lacks; returns files fetched."""
        fetched = 0
        for source in STEP_INPUTS.get(step, ()):
            for relative, size in self._manifest(source).items():
                local = work.dir / relative
                if local.is_file() and local.stat().st_size == size:
                    continue  # this host wrote it (or fetched it) itself
                self.storage.fetch(f"{self.prefix}/{relative}", local)
                fetched += 1
        return fetched

    def push(self, work: ExpertWorkArea, step: str) -> int:
        """Store what `step` wrote, then its manifest (last: a manifest names only stored files)."""
        folder = STEP_OUTPUTS.get(step)
        if folder is None:
            return 0
        manifest: dict[str, int] = {}
        root = work.dir / folder
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if not path.is_file() or path.name.endswith(".partial"):
                continue
            relative = path.relative_to(work.dir).as_posix()
            with open(path, "rb") as handle:
                manifest[relative] = self.storage.save(f"{self.prefix}/{relative}", handle).size_bytes
        body = json.dumps(manifest).encode()
        with tempfile.TemporaryFile() as handle:
            handle.write(body)
            handle.seek(0)
            self.storage.save(self._manifest_key(step), handle)
        return len(manifest)

    def forget_expert(self) -> int:
        """The expert is done: its hand-over files (this run's and failed runs') go."""
        return self.storage.delete_prefix(self.expert_prefix)

    def _manifest(self, step: str) -> dict[str, int]:
        with tempfile.TemporaryDirectory(prefix="ep-manifest-") as folder:
            target = Path(folder) / "manifest.json"
            try:
                self.storage.fetch(self._manifest_key(step), target)
            except FileMissing as exc:
                # Every step that succeeded stored one, empty or not: its hand-over failed.
                raise HandOverMissing(
                    f"{step}'s output for this run is not in file storage ({self._manifest_key(step)}): "
                    "storing it failed after the step (see the step's log); retry the expert"
                ) from exc
            loaded: dict[str, int] = json.loads(target.read_text())
            return loaded


def _storage() -> FileStorage:
    from expert_pipeline.adapters.factory import build_file_storage
    from expert_pipeline.core.settings import get_settings

    return build_file_storage(get_settings())


def begin_step(context: dg.AssetExecutionContext, work: ExpertWorkArea, progress: ExpertProgress) -> None:
    """On a worker: note a lost worker whose step this one takes over, then pull the inputs."""
    if not runs_on_workers(context):
        return
    step = context.op.name
    earlier = _celery_workers(context.instance, context.run.run_id, step)
    if len(earlier) >= 2:
        # dagster-celery reports one engine event per delivery of the step's task: an earlier
        # one that never finished was on a worker that died (its task was redelivered to us).
        lost = earlier[-2].split("@")[-1]
        if lost == worker_name():
            # The same host had it before: its worker restarted, or the broker lost the result.
            progress.event(
                f"{step} is run again on {lost}: its earlier delivery never reported back "
                "(the worker restarted, or the broker lost its result)",
                {"kind": "step_redelivered", "worker": lost, "step": step},
            )
        else:
            progress.event(
                f"Worker {lost} was lost while running {step}; {worker_name()} took the step over",
                {"kind": "worker_lost", "lost_worker": lost, "worker": worker_name(), "step": step},
            )
    fetched = SharedHandOver(_storage(), context.partition_key, context.run.run_id).pull(work, step)
    context.log.info(f"{step} on {worker_name()}: {fetched} hand-over file(s) fetched from file storage")


def _celery_workers(instance: dg.DagsterInstance, run_id: str, step: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    workers: list[str] = []
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key != step:
            continue
        value = event.engine_event_data.metadata.get(CELERY_WORKER_KEY)
        if value is not None:
            workers.append(str(value.value))
    return workers


@dg.success_hook(name="shared_hand_over")
def hand_over_hook(context: dg.HookContext) -> None:
    """After a step on a worker succeeded: store its outputs for the next step's host."""
    from expert_pipeline.core.settings import get_settings
    from expert_pipeline.ingest.work_area import ExpertWorkArea

    step = context.op.name
    run = context.instance.get_run_by_id(context.run_id)
    expert_id = run.tags.get("dagster/partition") if run is not None else None
    if expert_id is None:
        return
    hand_over = SharedHandOver(_storage(), expert_id, context.run_id)
    if step == LAST_STEP:
        hand_over.forget_expert()
        return
    work = ExpertWorkArea(get_settings().work_dir / expert_id, context.run_id)
    stored = hand_over.push(work, step)
    # The next step may run on any host and fetches what it reads: this host keeps nothing.
    work.remove()
    context.log.info(f"{step} on {worker_name()}: {stored} hand-over file(s) stored in file storage")
