"""Creating, listing and deleting experts over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from expert_pipeline.core.settings import Settings
from tests.fixture_documents import make_pdf, sample_paragraphs


@pytest.fixture
def pdf_bytes(tmp_path: Path) -> bytes:
    return make_pdf(tmp_path / "doc.pdf", ["\n\n".join(sample_paragraphs(3))]).read_bytes()


def test_create_answers_with_expert_and_pending_progress(http: httpx.Client, pdf_bytes: bytes, settings: Settings) -> None:
    response = http.post(
        "/api/experts",
        data={"name": "Tax adviser", "agent_id": "agent_7"},
        files=[("files", ("report.pdf", pdf_bytes, "application/pdf")), ("files", ("notes.txt", b"hello", "text/plain"))],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    expert, progress = body["expert"], body["progress"]
    assert (expert["name"], expert["agent_id"]) == ("Tax adviser", "agent_7")
    assert [f["filename"] for f in expert["files"]] == ["report.pdf", "notes.txt"]
    assert [f["size_bytes"] for f in expert["files"]] == [len(pdf_bytes), 5]
    assert (progress["expert_id"], progress["status"], progress["total_files"]) == (expert["id"], "pending", 2)
    # The files are stored under the expert's prefix, and the progress row is visible at once.
    stored = sorted(p.name for p in (settings.files_dir / "experts" / expert["id"]).rglob("*") if p.is_file())
    assert stored == ["notes.txt", "report.pdf"]
    assert http.get(f"/api/experts/{expert['id']}/progress").json()["progress"]["status"] == "pending"
    assert http.get("/api/experts/progress/active").json()["count"] == 1


def test_list_and_get(http: httpx.Client, pdf_bytes: bytes) -> None:
    ids = []
    for name in ("First", "Second"):
        r = http.post("/api/experts", data={"name": name}, files={"files": ("a.pdf", pdf_bytes)})
        ids.append(r.json()["expert"]["id"])
    listing = http.get("/api/experts").json()
    assert listing["count"] == 2
    assert [e["name"] for e in listing["experts"]] == ["Second", "First"]  # newest first
    assert all(e["progress"]["status"] == "pending" for e in listing["experts"])
    one = http.get(f"/api/experts/{ids[0]}").json()["expert"]
    assert one["name"] == "First" and one["files"][0]["status"] == "pending"
    assert http.get("/api/experts/no-such-expert").status_code == 404


@pytest.mark.parametrize(
    ("data", "files", "status", "fragment"),
    [
        ({"name": "x"}, [("files", ("virus.exe", b"MZ", "application/octet-stream"))], 415, "unsupported file type (.exe)"),
        ({"name": "x"}, [("files", ("noext", b"abc", "text/plain"))], 415, "no extension"),
        ({"name": "   "}, [("files", ("a.txt", b"abc", "text/plain"))], 400, "needs a name"),
        ({"name": "x"}, [], 422, "files"),
        ({}, [("files", ("a.txt", b"abc", "text/plain"))], 422, "name"),
    ],
)
def test_bad_requests_get_clear_errors(
    http: httpx.Client, settings: Settings, data: dict[str, str], files: list[object], status: int, fragment: str
) -> None:
    response = http.post("/api/experts", data=data, files=files or None)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and fragment in body["error"]
    assert http.get("/api/experts").json()["count"] == 0
    assert not any(p.is_file() for p in settings.files_dir.rglob("*"))  # nothing half-created


# NUL (a 500 on PostgreSQL before), the rest of C0, DEL, C1, and the bidi marks and overrides.
FORBIDDEN_IN_NAMES = [
    "\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f",
    "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
    "\u2066", "\u2067", "\u2068", "\u2069",
]


def test_control_and_bidi_characters_in_name_or_agent_id_are_refused(
    http: httpx.Client, settings: Settings
) -> None:
    upload = [("files", ("a.txt", b"abc", "text/plain"))]
    for char in FORBIDDEN_IN_NAMES:
        code = f"U+{ord(char):04X}"
        for field, data in (
            ("name", {"name": f"Tax{char}adviser"}),
            ("agent_id", {"name": "Tax adviser", "agent_id": f"agent{char}7"}),
        ):
            response = http.post("/api/experts", data=data, files=upload)
            assert response.status_code == 422, (field, code, response.text)
            error = response.json()["error"]
            assert error.startswith(f"{field} contains ") and f"({code} at position " in error, error
    assert http.get("/api/experts").json()["count"] == 0
    assert http.get("/api/experts/progress/active").json()["count"] == 0
    assert not any(p.is_file() for p in settings.files_dir.rglob("*"))  # nothing stored
    # Plain text in any script is fine, joiners included.
    ok = http.post("/api/experts", data={"name": "Zoë 東京 👩\u200d⚖️", "agent_id": "agent_7"}, files=upload)
    assert ok.status_code == 201, ok.text
    assert ok.json()["expert"]["name"] == "Zoë 東京 👩\u200d⚖️"


def test_limits_on_size_and_count(tmp_path: Path, database_url: str) -> None:
    from status_api.main import create_app
    from tests.conftest import LiveServer

    small = Settings(
        expert_pipeline_home=tmp_path / "home", database_url=database_url,
        max_upload_file_bytes=1000, max_upload_files=2, max_upload_total_bytes=1500,
    )
    with LiveServer(create_app(small)) as server, httpx.Client(base_url=server.url) as client:
        too_big = client.post("/api/experts", data={"name": "x"}, files={"files": ("a.txt", b"a" * 1001)})
        assert too_big.status_code == 413 and "limit of 1000 bytes" in too_big.json()["error"]
        too_many = client.post(
            "/api/experts", data={"name": "x"}, files=[("files", (f"{i}.txt", b"a")) for i in range(3)]
        )
        assert too_many.status_code == 413 and "too many files" in too_many.json()["error"]
        too_much = client.post(
            "/api/experts", data={"name": "x"}, files=[("files", (f"{i}.txt", b"a" * 800)) for i in range(2)]
        )
        assert too_much.status_code == 413 and "limit of 1500 bytes" in too_much.json()["error"]
        assert client.get("/api/experts").json()["count"] == 0
    assert not any(p.is_file() for p in small.files_dir.rglob("*"))


def test_hostile_file_names_are_made_safe(http: httpx.Client, settings: Settings) -> None:
    response = http.post(
        "/api/experts", data={"name": "x"},
        files=[("files", ("../../etc/passwd.txt", b"root")), ("files", ("a" * 400 + ".md", b"# t"))],
    )
    assert response.status_code == 201, response.text
    names = [f["filename"] for f in response.json()["expert"]["files"]]
    assert names[0] == "passwd.txt"
    assert names[1].endswith(".md") and len(names[1]) <= 180
    home = settings.expert_pipeline_home.resolve()
    assert all(home in p.resolve().parents for p in settings.files_dir.rglob("*"))


def test_delete_removes_expert_files_and_progress(http: httpx.Client, pdf_bytes: bytes, settings: Settings) -> None:
    expert_id = http.post("/api/experts", data={"name": "x"}, files={"files": ("a.pdf", pdf_bytes)}).json()["expert"]["id"]
    assert http.delete(f"/api/experts/{expert_id}").json() == {"success": True}
    assert http.get(f"/api/experts/{expert_id}").status_code == 404
    assert http.get(f"/api/experts/{expert_id}/progress").status_code == 404
    assert not (settings.files_dir / "experts" / expert_id).exists()
    assert http.delete(f"/api/experts/{expert_id}").status_code == 404


# -- the OpenAPI document says what the server accepts and answers -----------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/api/experts", "GET, POST"),
        ("PUT", "/api/experts/expert-123", "GET, DELETE"),
        ("PATCH", "/api/experts/expert-123/progress", "GET, DELETE"),
        ("GET", "/api/experts/expert-123/cancel", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_method_not_allowed_lists_every_method_of_the_path(
    http: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"success": False, "error": "Method Not Allowed"}
    documented = {m.upper() for m in http.get("/openapi.json").json()["paths"][_template(path)]}
    assert set(allow.split(", ")) == documented


def _template(path: str) -> str:
    return path.replace("expert-123", "{expert_id}")


def _body_schema(document: dict, path: str) -> dict:
    ref = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_upload_forms_document_what_the_server_requires(http: httpx.Client) -> None:
    import re

    document = http.get("/openapi.json").json()
    create = _body_schema(document, "/api/experts")
    add = _body_schema(document, "/api/experts/{expert_id}/files")
    assert set(create["required"]) == {"name", "files"} and add["required"] == ["files"]
    assert create["properties"]["name"]["minLength"] == 1
    assert create["properties"]["files"]["minItems"] == 1 and add["properties"]["files"]["minItems"] == 1
    for path in ("/api/experts", "/api/experts/{expert_id}/files"):
        operation = document["paths"][path]["post"]
        assert {"400", "413", "415", "422"} <= set(operation["responses"])
        disposition = operation["requestBody"]["content"]["multipart/form-data"]["encoding"]["files"]["headers"][
            "Content-Disposition"
        ]
        assert re.search(disposition["schema"]["pattern"], disposition["example"])
        assert re.search(disposition["schema"]["pattern"], 'form-data; name="files"; filename="A.PDF"')
        assert not re.search(disposition["schema"]["pattern"], 'form-data; name="files"; filename="virus.exe"')
    # The documented name pattern accepts exactly the names the server accepts.
    pattern = create["properties"]["name"]["pattern"]
    upload = [("files", ("a.txt", b"abc", "text/plain"))]
    for name in ("Tax adviser", " padded ", "Zoë 東京 👩\u200d⚖️", "   ", "\u3000", "Tax\x00adviser", "a\u202eb"):
        accepted = http.post("/api/experts", data={"name": name}, files=upload).status_code == 201
        assert accepted == bool(re.search(pattern, name)), repr(name)


def test_gate_and_stream_answers_are_documented_as_json(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/api/") and path != "/api/meta/labels":
                assert {"401", "403", "503"} <= set(responses), (method, path)
            for status, answer in responses.items():
                if status.startswith(("4", "5")):  # errors are JSON, the live streams' included
                    assert list(answer["content"]) == ["application/json"], (method, path, status)
    stream = document["paths"]["/api/experts/{expert_id}/progress/stream"]["get"]["responses"]
    event = stream["200"]["content"]["text/event-stream"]["schema"]
    assert {"progress", "resync"} == set(event["properties"]["event"]["enum"])
