"""The dashboard's expert controls in Chromium at desktop (1280 px) and phone (390 px) widths,
against the real status API: cancel then retry, add files, delete, the details view, honest
failed/cancelled/stalled states, and axe-core (the npm package) in the main states.

No daemon: progress rows are written by hand, as a run would write them, so every state is
deterministic. Screenshots go to test-artifacts/dashboard-actions-<width>-<state>.png.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.db import engine_for
from expert_pipeline.core.models import ExpertFile
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer, skip_or_fail
from tests.pipeline_helpers import create_expert
from tests.test_dashboard_browser import ARTIFACTS, chromium  # noqa: F401 - the shared Chromium fixture

REPO = Path(__file__).resolve().parents[1]
AXE_DIR = REPO / "tests" / ".axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = [1280, 390]

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core from the npm registry, installed into tests/.axe (`make install-test` does it too)."""
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            skip_or_fail("npm is not installed: cannot install axe-core for the accessibility check")
        subprocess.run(
            [str(npm), "install", "--prefix", str(AXE_DIR), "--no-save", "--no-audit", "--no-fund", "axe-core@4"],
            check=True, timeout=300, capture_output=True,
        )
    return AXE_JS.read_text()


def assert_accessible(page: Any, axe_source: str, where: str) -> None:
    """Zero serious or critical axe violations. axe runs through page.evaluate, not a <script>
    element, so the page's Content-Security-Policy (no inline scripts) stays as it is."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source)
    violations = page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({
             id: v.id, impact: v.impact, help: v.help,
             nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`) }))"""
    )
    bad = [v for v in violations if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{where}: {bad}"


def shot(page: Any, width: int, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-actions-{width}-{name}.png"), full_page=True)


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def width(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def open_page(chromium: Any, width: int) -> Iterator[Any]:  # noqa: F811 - the fixture by name
    """A new page at the test's width; fails the test on any page error."""
    context = chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
        assert errors == [], errors
    finally:
        context.close()


def service(settings: Settings) -> Session:
    return Session(engine_for(settings.resolved_database_url), expire_on_commit=False)


def set_files(settings: Settings, expert_id: str, **outcomes: tuple[str, str | None, str | None]) -> None:
    """filename (dots as underscores) -> (status, error_kind, error_message)."""
    with service(settings) as session:
        for key, (status, kind, message) in outcomes.items():
            session.execute(
                update(ExpertFile)
                .where(ExpertFile.expert_id == expert_id, ExpertFile.filename == key.replace("_", "."))
                .values(status=status, error_kind=kind, error_message=message)
            )
        session.commit()


def progress(settings: Settings) -> ExpertProcessingProgressService:
    return ExpertProcessingProgressService(service(settings))


def docs(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        (tmp_path / name).write_text(f"Some words about {name} to index.")
        paths.append(tmp_path / name)
    return paths


def card_of(page: Any, expert_id: str) -> Any:
    return page.locator(f'[data-expert-id="{expert_id}"]')


# -- tests ------------------------------------------------------------------------------------


def test_cancel_then_retry(open_page: Any, settings: Settings, width: int, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = open_page
    expert_id = create_expert(settings, docs(tmp_path, "a.txt", "b.txt"), name="Cancel me")
    progress(settings).update_progress(
        expert_id, stage="embedding", progress_percentage=40, total_files=2, current_file_index=1,
        current_file="b.txt", eta_seconds=150,
    )
    set_files(settings, expert_id, a_txt=("indexed", None, None))

    with LiveServer(create_app(settings)) as server:
        page.goto(server.url + "/dashboard/")
        card = card_of(page, expert_id)
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=20_000)
        expect(card.locator(".details")).to_contain_text("About 2 min 30 s left")
        cancel = card.get_by_role("button", name="Cancel processing of Cancel me")
        expect(cancel).to_be_visible()
        expect(card.locator(".retry-button")).to_be_hidden()
        expect(card.locator(".add-files")).to_be_hidden()  # the API refuses new files while processing
        expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "40")

        # From the keyboard: Enter opens the confirmation; "Keep it" (focused first) changes nothing.
        cancel.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Cancel processing of Cancel me?")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(cancel).to_be_focused()
        expect(card).to_have_attribute("data-status", "in_progress")

        cancel.click()
        shot(page, width, "cancel-confirm")
        dialog.get_by_role("button", name="Cancel processing", exact=True).click()
        expect(card).to_have_attribute("data-status", "cancelled")
        expect(cancel).to_be_hidden()
        expect(page.locator("#toasts")).to_contain_text("Processing Cancel me was cancelled.")
        b_file = card.locator(".files li", has_text="b.txt")
        expect(b_file.locator(".file-status")).to_have_text("Not processed")
        expect(b_file).to_contain_text("cancelled before this file was finished")
        expect(card.locator(".files")).not_to_contain_text("Waiting")
        retry = card.get_by_role("button", name="Retry Cancel me")
        expect(retry).to_be_visible()
        expect(retry).to_be_focused()
        expect(card.locator(".retry-hint")).to_have_text(
            "Retry: 1 file already indexed is kept; 1 file will be processed again."
        )
        expect(card.locator(".add-files")).to_be_visible()
        assert page.request.get(f"{server.url}/api/experts/{expert_id}/progress").json()["progress"]["status"] == "cancelled"
        shot(page, width, "cancelled")

        page.keyboard.press("Enter")  # Retry has focus
        expect(card).to_have_attribute("data-status", "pending")
        expect(card.locator(".stage")).to_have_text("Queued")
        expect(cancel).to_be_visible()
        expect(retry).to_be_hidden()
        expect(page.locator("#toasts")).to_contain_text("Cancel me is queued again.")
        assert page.request.get(f"{server.url}/api/experts/{expert_id}/progress").json()["progress"]["status"] == "pending"
        shot(page, width, "retried")

        # The API's 409 (the expert finished meanwhile) reads as a sentence, and the card catches up.
        def finish_first(route: Any) -> None:
            progress(settings).mark_failed(expert_id, "The pipeline stopped")
            route.continue_()

        page.route("**/cancel", finish_first)
        cancel.click()
        page.get_by_role("dialog").get_by_role("button", name="Cancel processing", exact=True).click()
        expect(card.locator(".action-error")).to_have_text("Cancel is not possible now: this expert is already failed.")
        expect(card).to_have_attribute("data-status", "failed")


def test_add_files_then_delete(open_page: Any, settings: Settings, width: int, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = open_page
    expert_id = create_expert(settings, docs(tmp_path, "a.txt"), name="Adder")
    progress(settings).update_progress(expert_id, stage="embedding", progress_percentage=50)
    set_files(settings, expert_id, a_txt=("indexed", None, None))
    progress(settings).mark_completed(expert_id)

    with LiveServer(create_app(settings)) as server:
        page.goto(server.url + "/dashboard/")
        card = card_of(page, expert_id)
        expect(card).to_have_attribute("data-status", "completed")
        expect(card.locator(".cancel-button")).to_be_hidden()
        expect(card.locator(".retry-button")).to_be_hidden()
        zone = card.locator(".add-files")
        expect(zone).to_be_visible()
        file_input = card.get_by_label("Add files to Adder")
        expect(file_input).to_have_count(1)

        # A refused upload shows the API's reason on the card.
        file_input.set_input_files(files=[{"name": "virus.exe", "mimeType": "application/octet-stream", "buffer": b"MZ"}])
        expect(card.locator(".action-error")).to_contain_text("unsupported file type (.exe)")

        # A good one: uploaded with progress, the card queues again with the new file waiting.
        file_input.set_input_files(files=[{"name": "c.txt", "mimeType": "text/plain", "buffer": b"New words." * 2000}])
        expect(card).to_have_attribute("data-status", "pending")
        expect(card.locator(".action-error")).to_be_hidden()
        expect(card.locator(".files li")).to_have_count(2)
        expect(card.locator(".files li", has_text="c.txt").locator(".file-status")).to_have_text("Waiting")
        expect(page.locator("#toasts")).to_contain_text("Added c.txt to Adder")
        names = [f["filename"] for f in page.request.get(f"{server.url}/api/experts/{expert_id}").json()["expert"]["files"]]
        assert sorted(names) == ["a.txt", "c.txt"]
        shot(page, width, "file-added")

        # Delete: the confirmation names the expert; "Keep it" keeps it; confirming removes it.
        delete = card.get_by_role("button", name="Delete Adder")
        delete.click()
        dialog = page.get_by_role("dialog", name="Delete Adder?")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("Adder and its 2 files")
        shot(page, width, "delete-confirm")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(card).to_be_visible()
        delete.click()
        dialog.get_by_role("button", name="Delete Adder").click()
        expect(card).to_have_count(0)
        expect(page.locator("#toasts")).to_contain_text("Adder was deleted.")
        expect(page.locator("#experts-empty")).to_be_visible()
        assert page.request.get(f"{server.url}/api/experts/{expert_id}").status == 404
        shot(page, width, "deleted")


def test_failed_stalled_and_details(
    open_page: Any, settings: Settings, width: int, tmp_path: Path, database_url: str
) -> None:
    from playwright.sync_api import expect

    page = open_page
    settings = Settings(expert_pipeline_home=settings.expert_pipeline_home, database_url=database_url,
                        stall_after_seconds=1)
    stuck_id = create_expert(settings, docs(tmp_path, "s.txt"), name="Stuck")
    expert_id = create_expert(settings, docs(tmp_path, "a.txt", "b.txt", "c.txt"), name="Broken")
    p = progress(settings)
    p.update_progress(expert_id, stage="text_extraction", progress_percentage=20, total_files=3)
    set_files(settings, expert_id, a_txt=("indexed", None, None),
              b_txt=("failed", "encrypted", "The PDF is password-protected"))
    p.record_event(expert_id, "b.txt failed: The PDF is password-protected", {"filename": "b.txt", "kind": "encrypted"})
    p.update_progress(expert_id, stage="embedding", progress_percentage=45)
    p.mark_failed(expert_id, "Processing stopped unexpectedly")

    with LiveServer(create_app(settings)) as server:
        page.goto(server.url + "/dashboard/")
        card = card_of(page, expert_id)
        expect(card).to_have_attribute("data-status", "failed")
        expect(card.locator(".error-message")).to_have_text("Processing failed: Processing stopped unexpectedly")
        expect(card.locator(".files")).not_to_contain_text("Waiting")
        c_file = card.locator(".files li", has_text="c.txt")
        expect(c_file.locator(".file-status")).to_have_text("Not processed")
        expect(c_file).to_contain_text("Processing failed before this file was finished; Retry processes it")
        expect(card.locator(".files li", has_text="b.txt")).to_contain_text("The PDF is password-protected")
        expect(card.locator(".retry-hint")).to_have_text(
            "Retry: 1 file already indexed is kept; 2 files will be processed again."
        )
        expect(card.get_by_role("progressbar")).to_be_hidden()

        # A queued expert nothing takes says why instead of showing a frozen bar; no ETA is made up.
        stuck = card_of(page, stuck_id)
        reason = None
        for _ in range(50):
            body = page.request.get(f"{server.url}/api/experts/{stuck_id}/progress").json()["progress"]
            if body["stalled"]:
                reason = body["stalled_reason"]
                break
            page.wait_for_timeout(200)
        assert reason, "the API never called the expert stalled"
        expect(stuck.locator(".details li.warning")).to_have_text(reason, timeout=10_000)
        expect(stuck.locator(".details")).not_to_contain_text("left")
        shot(page, width, "failed-and-stalled")

        # Details: the history from GET .../progress/events, each file's outcome and reason.
        details_button = card.get_by_role("button", name="Details of Broken")
        details_button.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Details of Broken")
        expect(dialog).to_be_visible()
        timeline = dialog.locator("#timeline li.event")
        events = page.request.get(f"{server.url}/api/experts/{expert_id}/progress/events").json()["events"]
        expect(timeline).to_have_count(len(events))
        expect(timeline.first).to_contain_text("Queued for processing")
        expect(timeline.first.locator("time")).to_have_attribute("datetime", events[0]["created_at"])
        expect(dialog.locator("#timeline")).to_contain_text("b.txt failed: The PDF is password-protected")
        expect(timeline.last).to_contain_text("Processing stopped unexpectedly")
        expect(timeline.last.locator(".event-stage")).to_have_text("Failed")
        outcomes = dialog.locator("#file-outcomes li")
        expect(outcomes).to_have_count(3)
        expect(outcomes.filter(has_text="a.txt")).to_contain_text("Indexed")
        expect(outcomes.filter(has_text="b.txt")).to_contain_text("The PDF is password-protected")
        expect(outcomes.filter(has_text="c.txt")).to_contain_text("Not processed")
        expect(dialog.locator("#stage-times")).to_contain_text("Queued")
        expect(dialog.locator("#stage-times")).to_contain_text("Extracting text")
        shot(page, width, "details")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(details_button).to_be_focused()


def test_axe_in_the_main_states(
    open_page: Any, settings: Settings, width: int, db: Session, axe_source: str
) -> None:
    from playwright.sync_api import expect

    page = open_page
    token = auth.create_token(db, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    with LiveServer(create_app(settings)) as server:
        page.goto(server.url + "/dashboard/")
        error = page.locator("#sign-in-error")
        expect(error).to_be_visible()
        # The sign-in error is dark on light now (was white on pale pink).
        colours = error.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
        assert colours[0] != "rgb(255, 255, 255)", colours
        assert_accessible(page, axe_source, "signed out")
        shot(page, width, "signed-out")

        page.fill("#api-token", token)
        page.keyboard.press("Enter")
        expect(page.locator("#experts-empty")).to_be_visible()
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=20_000)
        assert_accessible(page, axe_source, "empty")

        def create(name: str) -> str:
            r = page.request.post(server.url + "/api/experts", headers=headers, multipart={
                "name": name, "files": {"name": "a.txt", "mimeType": "text/plain", "buffer": b"words"}})
            assert r.status == 201, r.text()
            return str(r.json()["expert"]["id"])

        busy = create("Busy")
        progress(settings).update_progress(busy, stage="embedding", progress_percentage=30, eta_seconds=95,
                                           total_batches=10, current_batch=3)
        busy_card = card_of(page, busy)
        expect(busy_card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "30", timeout=10_000)
        expect(busy_card.locator(".details")).to_contain_text("About 1 min 35 s left")
        assert_accessible(page, axe_source, "processing")
        shot(page, width, "processing")

        failed = create("Failing")
        progress(settings).update_progress(failed, stage="text_extraction", progress_percentage=10)
        set_files(settings, failed, a_txt=("failed", "empty", "The file has no text"))
        progress(settings).mark_failed(failed, "No file could be read")
        expect(card_of(page, failed)).to_have_attribute("data-status", "failed", timeout=10_000)
        assert_accessible(page, axe_source, "failed")

        ready = create("Ready")
        progress(settings).update_progress(ready, stage="embedding", progress_percentage=80)
        set_files(settings, ready, a_txt=("indexed", None, None))
        progress(settings).mark_completed(ready)
        ready_card = card_of(page, ready)
        expect(ready_card).to_have_attribute("data-status", "completed", timeout=10_000)
        expect(ready_card.locator(".chat-button")).to_be_enabled(timeout=10_000)
        assert_accessible(page, axe_source, "ready")
        shot(page, width, "states")

        # Every control is reachable with Tab and works with Enter.
        reached = []
        for _ in range(80):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("() => document.activeElement?.getAttribute('aria-label') || ''"))
        for name in ("Cancel processing of Busy", "Retry Failing", "Details of Ready", "Delete Ready"):
            assert name in reached, (name, reached)

        ready_card.locator(".chat-button").focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("dialog", name="Chat with Ready")).to_be_visible()
        assert_accessible(page, axe_source, "chat open")
        shot(page, width, "chat-open")
        page.keyboard.press("Escape")

        ready_card.get_by_role("button", name="Details of Ready").click()
        expect(page.locator("#timeline li.event").first).to_be_visible()
        assert_accessible(page, axe_source, "details open")
        page.keyboard.press("Escape")

        ready_card.get_by_role("button", name="Delete Ready").click()
        expect(page.get_by_role("dialog", name="Delete Ready?")).to_be_visible()
        assert_accessible(page, axe_source, "confirm open")
        page.keyboard.press("Escape")

        if width < 500:
            assert page.evaluate("document.documentElement.scrollWidth") <= width
