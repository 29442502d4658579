"""The production parts, chosen by configuration alone, through their real SDKs over HTTP:
S3 (moto's server), OpenAI embeddings and Pinecone (local stand-ins)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from fastapi.testclient import TestClient

from expert_pipeline.chat.openai_chat import OpenAIChat
from expert_pipeline.core.settings import Settings
from expert_pipeline.adapters.factory import PartsMisconfigured, build_vector_store, check_parts
from expert_pipeline.adapters.parts_description import describe_parts
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.openai_standin import API_KEY as OPENAI_KEY
from tests.openai_standin import OpenAIStandin
from tests.pinecone_standin import API_KEY as PINECONE_KEY
from tests.pinecone_standin import PineconeStandin
from tests.pipeline_helpers import run_ingest


@pytest.fixture
def production(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, s3_bucket: str,
    openai_standin: OpenAIStandin, pinecone_standin: PineconeStandin,
) -> Iterator[Settings]:
    env = {
        "FILE_STORAGE": "s3", "S3_BUCKET": s3_bucket, "S3_PREFIX": "tenant-a", "AWS_ENDPOINT_URL": moto_endpoint,
        "EMBEDDING_PROVIDER": "openai", "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": openai_standin.url,
        "VECTOR_STORE": "pinecone", "PINECONE_API_KEY": PINECONE_KEY, "PINECONE_INDEX_HOST": pinecone_standin.url,
        "EXPERT_PIPELINE_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pinecone_standin.dimension = 1536  # the index is created for the embedding model's size
    yield Settings()  # read from the environment, exactly as a deployment would


def test_configuration_selects_every_production_part(production: Settings) -> None:
    parts = describe_parts(production)
    assert parts["file storage"].startswith("s3://") and parts["file storage"].endswith("/tenant-a")
    assert parts["embeddings"].startswith("openai text-embedding-3-small via http://127.0.0.1")
    assert parts["vector store"].startswith("pinecone (http://127.0.0.1")
    check_parts(production)  # fully configured: no complaint
    chatty = production.model_copy(update={"chat_provider": "openai"})
    assert describe_parts(chatty)["chat"] == "openai gpt-4o-mini"
    provider = create_app(chatty).state.chat_provider
    assert isinstance(provider, OpenAIChat) and provider.base_url == production.openai_base_url


def test_upload_to_s3_ingest_with_openai_into_pinecone(
    production: Settings, tmp_path: Path, s3_client: Any, s3_bucket: str,
    openai_standin: OpenAIStandin, pinecone_standin: PineconeStandin, instance: dg.DagsterInstance,
) -> None:
    pdf = make_pdf(tmp_path / "ocean.pdf", ["\n\n".join(sample_paragraphs(8, seed=s)) for s in range(4)])
    with LiveServer(create_app(production)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post("/api/experts", data={"name": "Ocean"}, files={"files": ("ocean.pdf", pdf.read_bytes())})
        assert created.status_code == 201, created.text
        expert_id = created.json()["expert"]["id"]
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        assert len(keys) == 1 and keys[0].startswith(f"tenant-a/experts/{expert_id}/")

        assert run_ingest(production, expert_id, instance).success
        progress = client.get(f"/api/experts/{expert_id}/progress").json()["progress"]
        assert (progress["status"], progress["processed_files"]) == ("completed", 1)
        chunks = progress["total_chunks"]
        assert chunks > 0
        assert build_vector_store(production).count(expert_id) == chunks
        # Packed to the API's limits, not 10 per call: one request for this document.
        embedding_calls = openai_standin.embedding_requests
        assert 1 <= len(embedding_calls) <= max(1, 4 * chunks // 1000 + 1)
        assert all(r.api_key == PINECONE_KEY for r in pinecone_standin.requests)

        assert client.delete(f"/api/experts/{expert_id}").json() == {"success": True}
        assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
        assert build_vector_store(production).count(expert_id) == 0


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FILE_STORAGE": "s3"}, "no bucket"),
        ({"EMBEDDING_PROVIDER": "openai"}, "embeddings"),
        ({"VECTOR_STORE": "pinecone"}, "vector store"),
        ({"CHAT_PROVIDER": "openai"}, "CHAT_PROVIDER=openai needs OPENAI_API_KEY"),
    ],
)
def test_half_configured_part_fails_at_startup(
    env: dict[str, str], fragment: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("S3_BUCKET", "OPENAI_API_KEY", "PINECONE_API_KEY", "PINECONE_INDEX_HOST"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(expert_pipeline_home=tmp_path / "home")
    with pytest.raises(PartsMisconfigured, match="Configuration is incomplete") as caught:
        check_parts(settings)
    assert fragment in str(caught.value)
    with pytest.raises(PartsMisconfigured):  # the API refuses to start rather than fail later
        with TestClient(create_app(settings)):
            pass
