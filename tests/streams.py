"""Reading the live stream in tests."""

from __future__ import annotations

import httpx


def first_progress_chunk(http: httpx.Client, path: str, **kwargs: object) -> str:
    """The stream's first chunk that carries progress frames (the snapshot)."""
    with http.stream("GET", path, timeout=10, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, response.read()
        seen = ""
        for chunk in response.iter_text():
            seen += chunk
            if "event: progress" in seen:
                return seen
    raise AssertionError("the stream ended without a progress frame")
