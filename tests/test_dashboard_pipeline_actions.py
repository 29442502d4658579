"""The card controls end to end against the real pipeline (status API + Dagster daemon, SQLite):
cancel during embedding, retry, and it completes; add a file to the ready expert, it is indexed
and chat cites it; delete removes it. Desktop width; the phone width is covered, state by state,
in tests/test_dashboard_actions.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.fixture_documents import sample_paragraphs
from tests.test_dashboard_browser import ARTIFACTS, FACT, QUESTION, chromium  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def daemon_env() -> dict[str, str]:
    # Small batches: embedding lasts long enough (many progress writes) to be cancelled mid-way.
    return {"EMBEDDING_BATCH_SIZE": "8"}


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-pipeline-{name}.png"), full_page=True)


def test_cancel_retry_add_file_chat_delete_with_the_real_pipeline(
    daemon: Settings, chromium: Any, tmp_path: Path  # noqa: F811 - the fixture by name
) -> None:
    from playwright.sync_api import expect

    big = "\n\n".join(sample_paragraphs(4000, seed=61)).encode()
    with LiveServer(create_app(daemon)) as server:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(server.url + "/dashboard/")
            expect(page.locator("#live-state")).to_have_text("Live updates on", timeout=20_000)
            page.get_by_label("Name").fill("Almanac")
            page.locator("#expert-files").set_input_files(
                files=[{"name": "almanac.txt", "mimeType": "text/plain", "buffer": big}]
            )
            page.get_by_role("button", name="Create expert").click()
            card = page.locator(".card", has=page.get_by_role("heading", name="Almanac"))
            expect(card).to_be_visible(timeout=20_000)

            # Cancel while it embeds.
            expect(card.locator(".stage")).to_have_text("Generating embeddings", timeout=240_000)
            card.get_by_role("button", name="Cancel processing of Almanac").click()
            page.get_by_role("dialog").get_by_role("button", name="Cancel processing", exact=True).click()
            expect(card).to_have_attribute("data-status", "cancelled", timeout=10_000)
            shot(page, "cancelled-mid-embedding")

            # Retry: queued again, and this time it completes.
            card.get_by_role("button", name="Retry Almanac").click()
            expect(card).to_have_attribute("data-status", "completed", timeout=420_000)
            expect(card.locator(".files li[data-status='indexed']")).to_have_count(1)

            # Add a file to the ready expert: only it is ingested, and chat cites it.
            card.get_by_label("Add files to Almanac").set_input_files(
                files=[{"name": "keeper.txt", "mimeType": "text/plain", "buffer": FACT.encode()}]
            )
            expect(card.locator(".files li")).to_have_count(2, timeout=10_000)
            expect(card.locator(".files li[data-status='indexed']")).to_have_count(2, timeout=300_000)
            expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
            chat = card.locator(".chat-button")
            expect(chat).to_be_enabled(timeout=10_000)
            chat.click()
            dialog = page.get_by_role("dialog", name="Chat with Almanac")
            dialog.get_by_label("Your question").fill(QUESTION)
            page.keyboard.press("Enter")
            answer = dialog.locator(".msg-answer").last
            expect(answer.locator(".answer-text")).to_contain_text("4,317 violet shutters", timeout=60_000)
            expect(answer.locator(".sources li").first.locator(".source-where")).to_contain_text("keeper.txt")
            shot(page, "file-added-chat")
            page.keyboard.press("Escape")

            # The details view holds the whole story: the cancel, the retry, the second run.
            card.get_by_role("button", name="Details of Almanac").click()
            timeline = page.locator("#timeline")
            expect(timeline).to_contain_text("Cancelled by user")
            expect(timeline).to_contain_text("Processing complete")
            shot(page, "details")
            page.keyboard.press("Escape")

            # Delete: gone from the page and from the API.
            expert_id = card.get_attribute("data-expert-id")
            card.get_by_role("button", name="Delete Almanac").click()
            page.get_by_role("dialog", name="Delete Almanac?").get_by_role("button", name="Delete Almanac").click()
            expect(card).to_have_count(0)
            expect(page.locator("#toasts")).to_contain_text("Almanac was deleted.")
            assert page.request.get(f"{server.url}/api/experts/{expert_id}").status == 404
            assert errors == [], errors
        finally:
            context.close()
