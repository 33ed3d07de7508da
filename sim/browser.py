"""Headless Debian Chromium through chromedriver (selenium): the console's browser tests and the
demo's console screenshot. `make browser` installs chromium and chromium-driver when missing."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def missing() -> str | None:
    """Why no browser can start here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (`make browser` installs chromium and chromium-driver)"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1300) -> Iterator[Any]:
    """A headless Chromium with an empty profile of its own, closed and removed on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mpota-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, css: str, timeout: float = 15.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def login(driver: Any, base_url: str, token: str, then: str = "/") -> None:
    """Log in to the console with a token, as a person would: the form, then the page asked for."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + then)
    field = wait_for(driver, "input[name=token]")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login").click()


def console_screenshot(base_url: str, token: str, page: str, out: Path, ready_css: str) -> Path:
    """Log in, open `page`, wait for `ready_css`, save a PNG at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with chromium() as driver:
        login(driver, base_url, token, page)
        wait_for(driver, ready_css)
        driver.save_screenshot(str(out))
    return out
