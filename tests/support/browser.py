"""A real browser for the consent page tests: Debian's headless Chromium driven by Selenium, with axe-core.

Chromium and its driver are installed with ``apt-get`` when absent (as the
PostgreSQL fixture installs PostgreSQL), and axe-core with npm from the
pinned ``tools/axe-core`` lock file into the ignored ``.cache/``.  When they
cannot be installed the browser tests skip, saying why (and fail on CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
AXE_TOOLS = ROOT / "tools" / "axe-core"
AXE_DIR = ROOT / ".cache" / "axe-core"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
INSTALL_TIMEOUT_S = 600
#: The rules axe runs: WCAG 2.2 A and AA, and its best practices.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"the browser tests must run on CI but {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages first if need be."""
    found = _chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("chromium and chromium-driver are not installed, and apt-get cannot install them here (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", "chromium", "chromium-driver"],
    ):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            _unavailable(f"{' '.join(command[:2])} took longer than {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            _unavailable(f"{' '.join(command[:2])} failed: {done.stderr.strip()[-300:]}")
    return _chromium() or _unavailable("apt-get installed chromium but no chromium/chromedriver is on PATH")


def ensure_axe() -> str:
    """axe-core's script, installed from the pinned lock file if need be."""
    if not shutil.which("npm"):
        _unavailable("npm is not installed, so axe-core cannot be")
    done = subprocess.run(
        ["bash", str(AXE_TOOLS / "install.sh"), str(AXE_DIR)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0 or not AXE_SCRIPT.exists():
        _unavailable(f"axe-core did not install: {done.stderr.strip()[-300:]}")
    return AXE_SCRIPT.read_text(encoding="utf-8")


@dataclass
class Browser:
    """One headless Chromium for the whole session, and axe to check the page it shows."""

    driver: Any
    axe_source: str
    screenshots: Path | None

    def serious_violations(self) -> list[str]:
        """axe's serious and critical findings on the current page, one line each (empty is the goal)."""
        self.driver.execute_script(self.axe_source)
        found = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}}).then(r => done(r.violations), e => done(String(e)));",
            AXE_TAGS,
        )
        if isinstance(found, str):
            raise AssertionError(f"axe did not run: {found}")
        return [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in found
            if v["impact"] in ("serious", "critical")
        ]

    def screenshot(self, name: str) -> None:
        """Save the page as docs' screenshots when CASUS_SCREENSHOT_DIR names a folder (how docs/images is refreshed)."""
        if self.screenshots is None:
            return
        self.screenshots.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1200, min(max(height, 700), 2400))
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))
        self.driver.set_window_size(1200, 900)


def open_browser() -> Iterator[Browser]:
    browser, driver_path = ensure_chromium()
    axe_source = ensure_axe()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
        "--disable-extensions",
        "--no-first-run",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    # A UK locale, so date fields show day/month/year as the team sees them.
    service = Service(executable_path=driver_path, env={**os.environ, "LANG": "en_GB.UTF-8", "LANGUAGE": "en_GB"})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    screenshots = os.environ.get("CASUS_SCREENSHOT_DIR")
    try:
        yield Browser(driver, axe_source, Path(screenshots) if screenshots else None)
    finally:
        driver.quit()


class LiveServer:
    """The app served by waitress on a free 127.0.0.1 port, in a thread, for the length of the session."""

    def __init__(self, app: Any) -> None:
        from waitress.server import create_server

        self._server = create_server(app, host="127.0.0.1", port=0, threads=4, ident="casus-test")
        self.base = f"http://127.0.0.1:{self._server.effective_port}"  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.close()
        self._thread.join(timeout=10)
