"""The dashboard in a real browser against the real product: the status API, the Dagster
daemon's sensor and a real ingest run (SQLite). A person creates an expert, watches the bar
move to completion, and asks a question whose answer cites the right file and page.

Screenshots of the key moments go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer, skip_or_fail
from tests.fixture_documents import make_pdf, sample_paragraphs

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
FACT = "The lighthouse keeper Marisol Quenneville painted exactly 4,317 violet shutters in Port Elspeth in 1887."
QUESTION = "How many violet shutters did Marisol Quenneville paint?"

pytestmark = pytest.mark.browser


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        skip_or_fail("Chromium not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


DROP_FILE = """([name, content, type]) => {
  const data = new DataTransfer();
  data.items.add(new File([content], name, { type }));
  const zone = document.querySelector("#dropzone");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: data }));
  }
}"""

WATCH_BAR = """(id) => {
  const bar = document.querySelector(`[data-expert-id="${id}"] [role=progressbar]`);
  window.__barValues = [bar.getAttribute("aria-valuenow")];
  new MutationObserver(() => window.__barValues.push(bar.getAttribute("aria-valuenow")))
    .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
}"""


@pytest.mark.slow  # starts the real Dagster daemon
def test_create_watch_and_chat_in_the_browser(daemon: Settings, chromium: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page2 = sample_paragraphs(8, seed=52)
    page2.insert(5, FACT)
    pdf = make_pdf(tmp_path / "keeper.pdf", ["\n\n".join(sample_paragraphs(6, seed=51)), "\n\n".join(page2)])

    with LiveServer(create_app(daemon)) as server:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        try:
            page.goto(server.url + "/")
            expect(page).to_have_url(server.url + "/dashboard/")
            expect(page.get_by_role("heading", name="Create Expert")).to_be_visible()
            expect(page.locator("#live-state")).to_have_text("Live updates on")
            expect(page.locator("#experts-empty")).to_be_visible()

            # A rejected upload shows the API's own error.
            page.get_by_label("Name").fill("Lighthouse keeper")
            page.evaluate(DROP_FILE, ["virus.exe", "MZ", "application/octet-stream"])
            page.get_by_role("button", name="Create expert").click()
            error = page.locator("#create-error")
            expect(error).to_be_visible()
            expect(error).to_contain_text("unsupported file type (.exe)")
            page.get_by_role("button", name="Remove virus.exe").click()

            # The PDF through the file picker, a text file by drag and drop.
            page.locator("#expert-files").set_input_files(str(pdf))
            page.evaluate(DROP_FILE, ["notes.txt", "Ferry routes were mapped in Tallinn by Soren in 1931.", "text/plain"])
            selected = page.locator("#selected-files li")
            expect(selected).to_have_count(2)
            expect(selected.nth(0)).to_contain_text("keeper.pdf")
            expect(selected.nth(1)).to_contain_text("notes.txt")
            page.get_by_role("button", name="Create expert").click()

            # The card is there at once, queued, with a real progress bar and a disabled chat.
            card = page.locator(".card", has=page.get_by_role("heading", name="Lighthouse keeper"))
            expect(card).to_be_visible(timeout=10_000)
            expect(error).to_be_hidden()
            expert_id = card.get_attribute("data-expert-id")
            bar = card.get_by_role("progressbar")
            expect(bar).to_be_visible()
            expect(bar).to_have_attribute("aria-label", "Processing progress of Lighthouse keeper")
            expect(bar).to_have_attribute("aria-valuemin", "0")
            expect(bar).to_have_attribute("aria-valuemax", "100")
            page.evaluate(WATCH_BAR, expert_id)
            chat = card.locator(".chat-button")
            expect(chat).to_be_disabled()
            hint = card.locator(".chat-hint")
            expect(hint).to_contain_text("Available when processing completes")
            expect(hint).to_contain_text("% done")
            assert chat.get_attribute("aria-describedby") == hint.get_attribute("id")
            assert "Available when processing completes" in (chat.get_attribute("title") or "")
            expect(card.locator(".files li")).to_have_count(2)
            shot(page, "01-created")

            # The bar moves while the pipeline works...
            page.wait_for_function(
                """(id) => { const v = Number(document.querySelector(
                     `[data-expert-id="${id}"] [role=progressbar]`).getAttribute("aria-valuenow"));
                   return v > 0 && v < 100; }""",
                arg=expert_id, timeout=120_000,
            )
            expect(card.locator(".stage")).not_to_have_text("Queued")
            shot(page, "02-processing")

            # ...and reaches completion: bar gone, chat enabled, a toast says so.
            expect(card).to_have_attribute("data-status", re.compile("completed|failed|cancelled"), timeout=180_000)
            if card.get_attribute("data-status") != "completed":
                log = (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]
                pytest.fail(f"ingest did not complete: {card.locator('.error-message').text_content()}\n{log}")
            values = [int(v) for v in page.evaluate("window.__barValues")]
            assert values[-1] == 100, values
            assert values == sorted(values), values
            assert any(0 < v < 100 for v in values), values
            expect(bar).to_be_hidden(timeout=5_000)
            expect(chat).to_be_enabled()
            expect(hint).to_be_hidden()
            toast = page.locator("#toasts")
            assert toast.get_attribute("role") == "status" and toast.get_attribute("aria-live") == "polite"
            expect(toast).to_contain_text("Lighthouse keeper is ready to chat.")
            expect(card.locator(".files li[data-status='indexed']")).to_have_count(2)
            expect(card.locator(".summary")).to_contain_text("2 of 2 files indexed")
            shot(page, "03-complete")

            # Chat with the keyboard only.
            chat.focus()
            page.keyboard.press("Enter")
            dialog = page.get_by_role("dialog", name="Chat with Lighthouse keeper")
            expect(dialog).to_be_visible()
            question = dialog.get_by_label("Your question")
            expect(question).to_be_focused()
            question.type(QUESTION)
            page.keyboard.press("Enter")
            answer = dialog.locator(".msg-answer").last
            expect(answer.locator(".answer-text")).to_contain_text("4,317 violet shutters", timeout=30_000)
            expect(answer.locator(".answer-text")).to_contain_text("[1]")
            first_source = answer.locator(".sources li").first
            expect(first_source.locator(".source-where")).to_have_text("keeper.pdf, page 2")
            expect(first_source.locator(".source-snippet")).to_contain_text("Marisol")
            shot(page, "04-chat")
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            expect(chat).to_be_focused()

            # Readable on a phone: one column, nothing wider than the screen.
            page.set_viewport_size({"width": 375, "height": 812})
            assert page.evaluate("document.documentElement.scrollWidth") <= 375
            expect(chat).to_be_visible()
            shot(page, "05-phone")
            # Nothing went wrong in the page (the one 415 above was the point of the check).
            assert [e for e in errors if "status of 415" not in e] == [], errors
        finally:
            context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_falls_back_to_polling_and_shows_failures(
    chromium: Any, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    """No daemon: progress is written by hand. The live stream is blocked, so the page polls;
    a failure shows its reason, per-file results and a toast; chat follows the API's readiness."""
    from playwright.sync_api import expect
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from expert_pipeline.core.db import engine_for
    from expert_pipeline.core.models import ExpertFile
    from expert_pipeline.core.progress_service import ExpertProcessingProgressService
    from tests.pipeline_helpers import create_expert

    docs = []
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("Some words to index.")
        docs.append(tmp_path / name)
    expert_id = create_expert(settings, docs, name="Fallback")
    engine = engine_for(settings.resolved_database_url)

    with LiveServer(create_app(settings)) as server:
        context = chromium.new_context(viewport={"width": 1024, "height": 800})
        page = context.new_page()
        page.route("**/api/experts/progress/stream", lambda route: route.abort())
        try:
            page.goto(server.url + "/dashboard")
            live = page.locator("#live-state")
            expect(live).to_have_attribute("data-state", "polling")
            expect(live).to_contain_text("interrupted")
            card = page.locator(f'[data-expert-id="{expert_id}"]')
            expect(card.locator(".stage")).to_have_text("Queued")

            with Session(engine, expire_on_commit=False) as session:
                ExpertProcessingProgressService(session).update_progress(
                    expert_id, stage="embedding", progress_percentage=37, current_file="b.txt",
                    current_file_index=1, total_files=2, current_batch=3, total_batches=8,
                    current_chunk=24, total_chunks=64,
                )
            bar = card.get_by_role("progressbar")
            expect(bar).to_have_attribute("aria-valuenow", "37", timeout=6_000)  # a 2 s poll
            expect(card.locator(".stage")).to_have_text("Generating embeddings")
            expect(card.locator(".pct")).to_have_text("37%")
            details = card.locator(".details")
            expect(details).to_contain_text("File 2 of 2: b.txt")
            expect(details).to_contain_text("Batch 3/8")
            expect(details).to_contain_text("Chunks 24/64")
            expect(card.locator(".chat-hint")).to_have_text("Available when processing completes — 37% done")

            with Session(engine, expire_on_commit=False) as session:
                session.execute(update(ExpertFile).where(ExpertFile.filename == "a.txt").values(status="indexed"))
                session.execute(
                    update(ExpertFile).where(ExpertFile.filename == "b.txt")
                    .values(status="failed", error_kind="encrypted", error_message="The PDF is password-protected")
                )
                session.commit()
                ExpertProcessingProgressService(session).mark_failed(expert_id, "No file could be embedded")
            expect(card).to_have_attribute("data-status", "failed", timeout=6_000)
            expect(card.locator(".error-message")).to_have_text("Processing failed: No file could be embedded")
            expect(page.locator("#toasts")).to_contain_text("Processing Fallback failed: No file could be embedded")
            failed_file = card.locator(".files li[data-status='failed']")
            expect(failed_file).to_contain_text("b.txt")
            expect(failed_file).to_contain_text("The PDF is password-protected")
            expect(card.locator(".files-heading")).to_have_text("Files (2) — 1 failed")
            expect(bar).to_be_hidden(timeout=5_000)
            # a.txt was indexed before the failure: the API counts the expert ready, and so does the page.
            expect(card.locator(".chat-button")).to_be_enabled()
            expect(card.locator(".chat-hint")).to_have_text(
                "The last processing failed; chat answers from the files already indexed"
            )
            shot(page, "06-failed-polling")

            # Once the stream is reachable again the page goes back to it.
            page.unroute("**/api/experts/progress/stream")
            expect(live).to_have_attribute("data-state", "live", timeout=20_000)
        finally:
            context.close()
