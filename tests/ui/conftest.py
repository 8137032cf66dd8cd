"""Browser fixtures for the web UI tests: headless Chromium driven by selenium.

Debian's ``chromium`` and ``chromium-driver`` are used (``.ci/run`` installs them); the
tests skip when they are missing. The browser logs its console (``browser``) and its
network events (``performance``), so a test can require no console errors and no request
leaving the server. ``SAESERVE_UI_SCREENSHOTS=1`` makes the page tests retake the
screenshots in docs/ui/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import KEY, Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "ui"
WIDTHS = {"wide": 1280, "narrow": 390}
# The server behind the tests runs on two shared CPUs: generous waits, never timed asserts.
WAIT_S = 180


def take_screenshots() -> bool:
    return os.environ.get("SAESERVE_UI_SCREENSHOTS", "") not in ("", "0")


@dataclass
class Browser:
    """A Chromium session on the server's origin, with the test API key in localStorage."""

    driver: Any
    origin: str

    def open(self, path: str, width: int = WIDTHS["wide"]) -> None:
        """Load ``path`` in a viewport ``width`` px wide and wait until the page marks
        itself rendered."""
        self.set_width(width)
        self.flush_logs()
        self.driver.get(self.origin + path)
        self.wait_for("performance.getEntriesByName('saeserve:rendered').length > 0")

    def set_width(self, width: int) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def wait_for(self, js_condition: str, timeout: float = WAIT_S) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return Boolean({js_condition});")
        )

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def rendered_ms(self) -> float:
        """Milliseconds from navigation start to the page's last 'saeserve:rendered' mark."""
        return float(
            self.js("return performance.getEntriesByName('saeserve:rendered').at(-1).startTime")
        )

    def flush_logs(self) -> None:
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def requested_urls(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the server (data: URLs are not requests to a host)."""
        origin = urlsplit(self.origin)
        return [
            url
            for url in self.requested_urls()
            if not url.startswith("data:") and urlsplit(url)[:2] != origin[:2]
        ]

    def screenshot(self, name: str, width: int) -> None:
        """Full-page PNG at ``width`` px into docs/ui/ (only with SAESERVE_UI_SCREENSHOTS)."""
        if not take_screenshots():
            return
        self.set_width(width)
        time.sleep(0.3)  # let the new width reflow before measuring
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        (SCREENSHOT_DIR / f"{name}-{width}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="session")
def browser(server: Server) -> Iterator[Browser]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser = Browser(driver, server.http_url)
        driver.get(server.http_url + "/ui/style.css")  # same origin, so the key is stored for it
        driver.execute_script("localStorage.setItem('saeserve.apiKey', arguments[0])", KEY)
        yield browser
    finally:
        driver.quit()


def call_api(
    server: Server, path: str, body: dict[str, Any] | None = None, key: str | None = KEY
) -> tuple[int, Any]:
    """(status, parsed JSON or event-stream text) of an API call, by default with the key."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        server.http_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            raw = response.read().decode()
            status = response.status
            is_json = response.headers.get_content_type() == "application/json"
    except urllib.error.HTTPError as err:
        raw, status, is_json = err.read().decode(), err.code, True
    return status, json.loads(raw) if is_json else raw
