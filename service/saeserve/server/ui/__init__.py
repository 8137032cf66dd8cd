"""The web UI: a feature explorer and steering playground served beside the HTTP API.

Plain ES modules and CSS under ``static/`` (no build step, nothing fetched from another
host); ``routes.mount_ui`` adds the page routes and the static files to the FastAPI app.
Every page is a client of the JSON API under ``/v1``.
"""
