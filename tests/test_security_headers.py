"""Security headers on every response, and /docs served whole by the app (no CDN, no inline script)."""

from __future__ import annotations

import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from expert_pipeline.core.settings import Settings
from status_api.main import create_app
from tests.conftest import LiveServer
from tests.test_dashboard_browser import chromium  # noqa: F401 - the shared Chromium fixture

POLICY = "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"

# Header checks need no second database; the headers do not depend on it.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def assert_secure(response: httpx.Response, policy: str = POLICY) -> None:
    assert response.headers["content-security-policy"] == policy, response.url
    assert response.headers["x-content-type-options"] == "nosniff", response.url
    assert response.headers["referrer-policy"] == "no-referrer", response.url
    # One of each, even where a route sets its own policy.
    assert len(response.headers.get_list("content-security-policy")) == 1, response.url


def test_every_kind_of_response_carries_the_headers(http: httpx.Client) -> None:
    cases = [
        ("GET", "/api/experts", 200),
        ("GET", "/api/experts/progress/active", 200),
        ("GET", "/api/experts/no-such-expert/progress", 404),
        ("POST", "/api/experts/no-such-expert/chat", 404),
        ("GET", "/healthz", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/dashboard/", 200),
        ("GET", "/dashboard/app.js", 200),
        ("GET", "/dashboard/styles.css", 200),
        ("GET", "/dashboard/favicon.svg", 200),
        ("GET", "/", 307),
        ("GET", "/docs/init.js", 200),
        ("GET", "/docs/assets/swagger-ui-bundle.js", 200),
        ("GET", "/no-such-page", 404),
    ]
    for method, path, status in cases:
        body = {"message": "Hello?"} if method == "POST" else None
        response = http.request(method, path, json=body)
        assert response.status_code == status, (path, response.status_code)
        assert_secure(response)


def test_a_request_refused_before_the_app_runs_carries_them_too(live_api: LiveServer) -> None:
    # The upload size limit answers 413 from its middleware, before any route reads the body.
    host, port = urlsplit(live_api.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /api/experts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10737418240\r\n\r\n--b\r\n"
        )
        head = conn.recv(65536).decode().split("\r\n\r\n")[0].lower()
    assert head.startswith("http/1.1 413"), head
    assert f"content-security-policy: {POLICY}" in head
    assert "x-content-type-options: nosniff" in head and "referrer-policy: no-referrer" in head


def test_docs_are_served_locally_with_no_inline_script(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # The page's own policy only adds data: images (Swagger UI's icons); scripts stay 'self'.
    assert_secure(page, POLICY.replace("default-src 'self';", "default-src 'self'; img-src 'self' data:;"))
    html = page.text
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert sorted(urls) == [
        "/docs/assets/favicon.png", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/init.js",
    ]
    for url in urls:
        asset = http.get(url)
        assert asset.status_code == 200 and asset.content, url
        assert not urlsplit(url).netloc
    init = http.get("/docs/init.js").text
    assert '"url": "/openapi.json"' in init and '"validatorUrl": null' in init
    assert not re.search(r"https?://", html + init)
    assert http.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(
        ("text/javascript", "application/javascript")
    )
    assert http.get("/redoc").status_code == 404  # not offered: ReDoc needs inline styles


def _watch(page: Any, origin: str) -> tuple[list[str], list[str]]:
    """Console errors (where Chromium reports CSP violations) and requests to any other host."""
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: foreign.append(r.url) if urlsplit(r.url).netloc not in ("", origin) else None)
    return errors, foreign


@pytest.mark.browser
def test_dashboard_and_docs_run_under_the_policy_in_a_browser(
    chromium: Any, settings: Settings  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    with LiveServer(create_app(settings)) as server:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors, foreign = _watch(page, urlsplit(server.url).netloc)
        try:
            page.goto(server.url + "/dashboard/")
            expect(page.locator("#experts-empty")).to_be_visible()
            expect(page.locator("#live-state")).to_have_attribute("data-state", "live")

            page.goto(server.url + "/docs")
            # Swagger UI drew the operations from /openapi.json: its script ran under the policy.
            expect(page.locator("#operations-chat-chat_api_experts__expert_id__chat_post")).to_be_visible()
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("Expert Pipeline status API")
            # Trying a call draws the form and response parts, whose icons are data: images.
            page.locator("#operations-experts-list_experts_api_experts_get .opblock-summary").click()
            page.get_by_role("button", name="Try it out").click()
            page.get_by_role("button", name="Execute").click()
            expect(page.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("200")
        finally:
            context.close()
    assert errors == [], errors  # a CSP violation would be one of them
    assert foreign == [], foreign
