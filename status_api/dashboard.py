"""Serving the user dashboard (plain files in `dashboard/`, no build step) at /dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "dashboard"


class _DashboardFiles(StaticFiles):
    """Static files that browsers revalidate, so a new version is picked up on reload."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def install_dashboard(app: FastAPI, directory: Path = DASHBOARD_DIR) -> None:
    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard", include_in_schema=False)
    def _dashboard() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount(
        "/dashboard", _DashboardFiles(directory=directory, html=True, check_dir=False), name="dashboard"
    )
