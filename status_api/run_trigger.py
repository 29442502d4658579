"""Start an expert's run the moment its upload (or retry) commits, instead of waiting for the
pending-experts sensor's next tick (Dagster evaluates sensors every ~5 s): the run is submitted
through the Dagster webserver's GraphQL API, with the run key and sensor tags the sensor would
give it, so the sensor skips the request it would otherwise launch a second time. The sensor
stays the safety net: when the webserver is not there (`make api`), or the submission fails, it
picks the request up on its next tick. The API never imports Dagster for this."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from expert_pipeline.core.models import ExpertProcessingProgress, Status
from expert_pipeline.core.run_requests import EXPERTS_PARTITIONS, INGEST_JOB_NAME, run_tags

log = logging.getLogger("status_api.run_trigger")

LOCATION_NAME = "expert_pipeline"  # workspace.yaml
REPOSITORY_NAME = "__repository__"  # what Dagster names the repository of a Definitions object

# One request: GraphQL runs a document's mutations in order, so the partition exists before the
# run is launched for it.
SUBMIT_RUN = """
mutation SubmitRun(
  $selector: RepositorySelector!, $name: String!, $key: String!, $executionParams: ExecutionParams!
) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConflict { message }
    ... on UnauthorizedError { message }
  }
}"""


class RunTrigger:
    """Submits runs off the request thread; `request` returns at once."""

    def __init__(self, graphql_url: str, engine: Engine, timeout_seconds: float = 10.0) -> None:
        self.graphql_url = graphql_url
        self._engine = engine
        self._http = httpx.Client(timeout=timeout_seconds)  # one connection kept, not one per upload
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="run-trigger")

    def request(self, expert_id: str) -> None:
        self._pool.submit(self._launch_quietly, expert_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def _launch_quietly(self, expert_id: str) -> None:
        try:
            run_id = self.launch(expert_id)
            if run_id:
                log.info("expert %s: run %s submitted at upload", expert_id, run_id)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            # Nothing lost: the sensor launches the request on its next tick.
            log.warning("expert %s: could not submit its run now (%s); the sensor will", expert_id, exc)

    def launch(self, expert_id: str) -> str | None:
        """Submit the pending request's run; its run id, or None when nothing waits any more."""
        # Read back as the sensor reads it, so both compute the same run key from the same value.
        with Session(self._engine) as session:
            record = session.scalar(
                select(ExpertProcessingProgress).where(ExpertProcessingProgress.expert_id == expert_id)
            )
            if record is None or record.status != Status.PENDING:
                return None
            tags = run_tags(record, launched_by="status API")
        selector = {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME}
        params = {
            "selector": {**selector, "jobName": INGEST_JOB_NAME},
            "executionMetadata": {
                "tags": [{"key": k, "value": v} for k, v in {**tags, "dagster/partition": expert_id}.items()]
            },
        }
        answer = self._call(
            SUBMIT_RUN,
            {"selector": selector, "name": EXPERTS_PARTITIONS, "key": expert_id, "executionParams": params},
        )
        kind = answer["addDynamicPartition"]["__typename"]
        if kind not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise ValueError(f"adding the partition: {kind}: {answer['addDynamicPartition'].get('message')}")
        launched = answer["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise ValueError(f"launching the run: {launched['__typename']}: {launched.get('message')}")
        return str(launched["run"]["runId"])

    def _call(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        answer = self._http.post(self.graphql_url, json={"query": query, "variables": variables})
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise ValueError(str(body["errors"][0].get("message")))
        return dict(body["data"])
