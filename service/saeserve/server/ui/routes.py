"""The web UI's routes: one HTML shell per page, and the static assets under ``/ui``.

Each page route answers the same small HTML document (``page.html``) naming the page's
ES module; the module reads the URL and calls the JSON API from the browser. Pages need
no API key to load: the key the user types is sent by the page with each API call.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent
STATIC_DIR = UI_DIR / "static"
SHELL = (UI_DIR / "page.html").read_text(encoding="utf-8")


def render_page(page: str, title: str) -> HTMLResponse:
    """The shell document for ``static/pages/{page}.js`` with the given title."""
    body = SHELL.replace("{{title}}", html.escape(title)).replace("{{page}}", page)
    return HTMLResponse(body, headers={"cache-control": "no-cache"})


def mount_ui(app: FastAPI) -> None:
    """Add ``/``, ``/saes/{sae}/features/{feature}`` (SAE ids may contain "/"),
    ``/inspect``, ``/contrast``, ``/search``, ``/steer``, ``/favicon.ico`` and the static files under
    ``/ui`` to ``app``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return render_page("home", "saeserve")

    @app.get(
        "/saes/{sae:path}/features/{feature}", response_class=HTMLResponse, include_in_schema=False
    )
    def feature(sae: str, feature: str) -> HTMLResponse:
        return render_page("feature", f"{sae} / {feature} · saeserve")

    @app.get("/inspect", response_class=HTMLResponse, include_in_schema=False)
    def inspect() -> HTMLResponse:
        return render_page("inspect", "Inspector · saeserve")

    @app.get("/contrast", response_class=HTMLResponse, include_in_schema=False)
    def contrast() -> HTMLResponse:
        return render_page("contrast", "Contrast · saeserve")

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search() -> HTMLResponse:
        return render_page("search", "Search features · saeserve")

    @app.get("/steer", response_class=HTMLResponse, include_in_schema=False)
    def steer() -> HTMLResponse:
        return render_page("steer", "Steering playground · saeserve")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """Browsers ask for /favicon.ico on any document, images included."""
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")
