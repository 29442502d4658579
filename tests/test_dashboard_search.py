"""The dashboard's "Test retrieval" box on a ready expert, in Chromium at 1280 and 390 px against
the real status API after a real ingest: keyboard only, ranked passages with file, page and
score, hidden while the expert is not ready, and axe-core clean. Screenshots go to
test-artifacts/dashboard-search-<width>.png."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.fixture_documents import make_pdf, sample_paragraphs
from tests.pipeline_helpers import create_expert, run_ingest
from tests.test_dashboard_actions import assert_accessible, axe_source  # noqa: F401 - the fixture by name
from tests.test_dashboard_browser import ARTIFACTS, chromium  # noqa: F401 - the shared Chromium fixture
from tests.test_hybrid_retrieval import CATALOGUE, TARGET

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_test_retrieval_lists_ranked_passages_on_a_ready_card(
    request: pytest.FixtureRequest,
    axe_source: str,  # noqa: F811 - the fixture by name
    settings: Settings,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    page3 = sample_paragraphs(8, seed=62)
    page3.insert(5, TARGET)
    parts = make_pdf(
        tmp_path / "parts.pdf",
        ["\n\n".join(CATALOGUE), "\n\n".join(sample_paragraphs(5, seed=61)), "\n\n".join(page3)],
    )
    ready_id = create_expert(settings, [parts], name="Parts")
    assert run_ingest(settings, ready_id, instance).success
    waiting = tmp_path / "later.txt"
    waiting.write_text("Not processed yet.")
    waiting_id = create_expert(settings, [waiting], name="Later")
    # Chromium (Playwright's event loop) only once the in-process Dagster run has ended.
    browser = request.getfixturevalue("chromium")

    with LiveServer(create_app(settings)) as server:
        for width in (1280, 390):
            context = browser.new_context(viewport={"width": width, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
            try:
                page.goto(server.url + "/dashboard/")
                card = page.locator(f'[data-expert-id="{ready_id}"]')
                expect(card).to_have_attribute("data-status", "completed", timeout=20_000)
                expect(page.locator(f'[data-expert-id="{waiting_id}"] .retrieval')).to_be_hidden()

                # Keyboard only: open the disclosure, type into the labelled box, Enter searches.
                summary = card.get_by_text("Test retrieval", exact=True)
                summary.focus()
                page.keyboard.press("Enter")
                box = card.get_by_label("Find passages")
                expect(box).to_be_visible()
                page.keyboard.press("Tab")
                expect(box).to_be_focused()
                page.keyboard.type("XR-7731")
                page.keyboard.press("Enter")

                results = card.get_by_role("list", name="Passages found in Parts's documents").locator("li")
                expect(card.locator(".search-status")).to_have_text("5 passages, best first")
                expect(results).to_have_count(5)
                first = results.first
                expect(first.locator(".source-where")).to_have_text("parts.pdf, page 3")
                expect(first).to_contain_text("XR-7731")
                scores = [float(t.removeprefix("score ")) for t in card.locator(".search-score").all_text_contents()]
                assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1

                # Nothing to search for: said so, focus stays in the box.
                box.fill("   ")
                page.keyboard.press("Enter")
                expect(card.locator(".search-status")).to_have_text("Type what to look for first.")
                expect(box).to_be_focused()

                # Fits the width: nothing in the card is wider than the viewport.
                overflow = page.evaluate("() => document.documentElement.scrollWidth")
                assert overflow <= width, (width, overflow)
                assert_accessible(page, axe_source, f"search at {width}px")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"dashboard-search-{width}.png"), full_page=True)
                assert errors == [], errors
            finally:
                context.close()
