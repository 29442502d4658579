"""The signed-in dashboard in a real browser: its live stream opens with a fresh single-use
ticket on every (re)connect, and its token never appears in a URL."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy.orm import Session

from expert_pipeline.core import auth
from expert_pipeline.core.progress_service import ExpertProcessingProgressService
from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.test_dashboard_browser import chromium  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

STREAM_URL = re.compile(r"/api/experts/progress/stream")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_signed_in_dashboard_streams_with_tickets(chromium: Any, settings: Settings, db: Session) -> None:
    from playwright.sync_api import expect

    token = auth.create_token(db, "alice")
    with LiveServer(create_app(settings)) as server:
        context = chromium.new_context()
        page = context.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        # The first stream connection fails: the page must reconnect, with a new ticket.
        page.route(STREAM_URL, lambda route: route.abort(), times=1)
        try:
            page.goto(server.url + "/dashboard/")
            expect(page.locator("#sign-in")).to_be_visible()
            page.fill("#api-token", token)
            page.locator("#sign-in").evaluate("form => form.requestSubmit()")
            live = page.locator("#live-state")
            expect(live).to_have_attribute("data-state", "live", timeout=20_000)

            r = page.request.post(server.url + "/api/experts", headers={"Authorization": f"Bearer {token}"},
                                  multipart={"name": "Live", "files": {"name": "a.txt", "mimeType": "text/plain",
                                                                       "buffer": b"words"}})
            assert r.status == 201, r.text()
            expert_id = r.json()["expert"]["id"]
            card = page.locator(f'[data-expert-id="{expert_id}"]')
            expect(card).to_be_visible(timeout=10_000)
            ExpertProcessingProgressService(db).update_progress(expert_id, stage="embedding", progress_percentage=42)
            expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "42", timeout=10_000)
        finally:
            context.close()
    streams = [url for url in urls if STREAM_URL.search(url)]
    tickets = [re.search(r"[?&]ticket=([^&]+)", url) for url in streams]
    assert len(streams) >= 2 and all(tickets), streams
    assert len({t.group(1) for t in tickets if t}) == len(streams)  # one ticket per connection
    assert not [url for url in urls if token in url or "access_token" in url]
