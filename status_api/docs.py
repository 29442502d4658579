"""The OpenAPI page at /docs, served whole by this app: no CDN, no inline script.

Swagger UI's files come from the installed `fastapi-offline` package (Swagger UI 5, which reads
the OpenAPI 3.1 document FastAPI writes), mounted at /docs/assets. The page's start-up code is
a small script of its own (/docs/init.js) instead of FastAPI's inline one, so the page works
under `script-src 'self'`. ReDoc is not offered (it injects inline styles).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from status_api.api.security_headers import CONTENT_SECURITY_POLICY

SWAGGER_UI_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"

# Swagger UI's stylesheet draws its icons as data: SVG images; nothing else is widened.
DOCS_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "default-src 'self';", "default-src 'self'; img-src 'self' data:;"
)


def _page(root: str, title: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{root}{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" href="{root}{ASSETS_PATH}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{root}{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{root}{DOCS_PATH}/init.js"></script>
</body>
</html>
"""


def _init_script(openapi_url: str) -> str:
    # validatorUrl null: Swagger UI would otherwise load a badge image from swagger.io.
    options = {
        "url": openapi_url,
        "dom_id": "#swagger-ui",
        "layout": "BaseLayout",
        "deepLinking": True,
        "showExtensions": True,
        "showCommonExtensions": True,
        "validatorUrl": None,
    }
    return (
        f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(options)}, {{\n"
        "  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],\n"
        "}));\n"
    )


def install_docs(app: FastAPI) -> None:
    """Serve /docs from local files; create the app with docs_url=None and redoc_url=None."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    def _docs(request: Request) -> HTMLResponse:
        root = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
        return HTMLResponse(
            _page(root, f"{app.title} - Swagger UI"),
            headers={"Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
        )

    @app.get(f"{DOCS_PATH}/init.js", include_in_schema=False)
    def _docs_init(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return Response(_init_script(root + openapi_url), media_type="text/javascript")

    app.mount(ASSETS_PATH, StaticFiles(directory=SWAGGER_UI_DIR), name="docs-assets")
