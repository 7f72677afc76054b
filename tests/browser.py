"""Headless Chromium (the system's, from Debian) driven by Selenium, for the browser tests.

Screenshots go to $D2LFLOW_SCREENSHOTS, else /tmp/d2lflow-screenshots: a stable place a person can
open after the run. Without Chromium the tests are skipped, except under CI=true where they fail
(.ci/run installs the packages chromium and chromium-driver).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
LOAD_TIMEOUT = 90.0  # seconds for a page of the MLflow UI to show what the test waits for (2 shared cores)


def screenshot_dir() -> Path:
    path = Path(os.environ.get("D2LFLOW_SCREENSHOTS") or Path(tempfile.gettempdir()) / "d2lflow-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        if found := shutil.which(name) or (Path("/usr/bin") / name if (Path("/usr/bin") / name).is_file() else None):
            return str(found)
    return None


def require_chromium() -> tuple[str, str]:
    """(browser, driver) paths; a skip without them, a failure under CI=true."""
    browser, driver = _find(CHROMIUM), _find(DRIVER)
    if browser and driver:
        return browser, driver
    message = ("Chromium and its driver are not installed (no chromium/chromedriver on PATH); "
               "install them: apt-get install -y chromium chromium-driver")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the browser tests: {message}")
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1500, height: int = 1000) -> Iterator:
    """A headless Chromium session (fresh profile, no sandbox as root, no background network, every
    non-loopback address refused through a dead proxy: pages must work offline)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    profile = Path(tempfile.mkdtemp(prefix="d2lflow-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--proxy-server=http://127.0.0.1:9"):  # loopback bypasses the proxy; the rest of the web is gone
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(LOAD_TIMEOUT)
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(session, condition: Callable[[], object], what: str, name: str, timeout: float = LOAD_TIMEOUT):
    """Poll `condition` until truthy; on timeout save a screenshot `name`-timeout.png and fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page is still rendering (stale or missing elements)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            shot = save_screenshot(session, f"{name}-timeout")
            body = session.find_element("tag name", "body").text[:2000]
            pytest.fail(f"{what} did not appear within {timeout:.0f} s at {session.current_url} "
                        f"(screenshot {shot}); the page shows:\n{body}")
        time.sleep(0.5)


def save_screenshot(session, name: str) -> Path:
    path = screenshot_dir() / f"{name}.png"
    session.save_screenshot(str(path))
    return path


def page_text(session) -> str:
    return session.find_element("tag name", "body").text
