"""A real headless browser for the report's tests and benchmark: Debian's chromium driven by its
chromedriver through selenium (`.ci/run` installs both; nothing is downloaded at run time).

`chromium()` yields a driver, or skips the test when chromium, chromedriver or selenium is missing,
unless ``MOE_COMPRESS_REQUIRE_BROWSER`` is set (CI sets it, so a missing browser fails there)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

CHROMIUM = os.environ.get("MOE_COMPRESS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MOE_COMPRESS_CHROMEDRIVER", "/usr/bin/chromedriver")
# The machine's network is closed: without these, chromium keeps trying to reach Google's services.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def missing() -> str | None:
    """Why no browser can be started here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@contextmanager
def chromium():
    """A headless chromium session with its console log readable (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
