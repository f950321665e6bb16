"""A live Django server in a thread and Debian's chromium driven through Selenium, for the
browser tests of the admin.

The server serves the admin's static files (as ``StaticLiveServerTestCase`` does) from this
process, so it sees the test's settings and the rows it committed.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.test.testcases import LiveServerThread
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds a page may take to show what is waited for: chromium on two busy cores is slow.
PAGE_TIMEOUT = 90.0


class LiveServer:
    """Django's ``LiveServerThread`` on a free port of 127.0.0.1, static files included."""

    def __init__(self) -> None:
        self._thread = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._thread.port}"

    def start(self) -> LiveServer:
        self._thread.daemon = True
        self._thread.start()
        self._thread.is_ready.wait()
        if self._thread.error is not None:
            raise self._thread.error
        return self

    def stop(self) -> None:
        self._thread.terminate()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Browser:
    """Headless chromium at a live server: open pages, fill forms, wait on what they show."""

    def __init__(self, base_url: str) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",  # containers run as root, where chromium's sandbox cannot start
            "--disable-dev-shm-usage",  # a small /dev/shm must not crash the renderer
            "--disable-gpu",
            "--window-size=1400,1000",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(PAGE_TIMEOUT)
        self.base_url = base_url

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def type(self, css: str, text: str) -> None:
        """Clear a field and type ``text`` into it, key by key."""
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def wait(self, check: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT) -> Any:
        """Poll ``check`` until it returns something truthy (elements may go stale meanwhile)."""

        def attempt(_: Any) -> Any:
            try:
                return check()
            except (StaleElementReferenceException, WebDriverException) as exc:
                if "invalid session id" in str(exc):
                    raise
                return None

        return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(
            attempt, f"waited {timeout:g} s for {what}; at {self.driver.current_url}"
        )

    def wait_for_text(self, css: str, pattern: str, timeout: float = PAGE_TIMEOUT) -> str:
        """Wait until an element matching ``css`` shows text matching ``pattern``; that text."""

        def shown() -> str | None:
            for element in self.find_all(css):
                if re.search(pattern, element.text):
                    return str(element.text)
            return None

        return str(self.wait(shown, f"{pattern!r} in {css}", timeout))

    def reload_until(
        self, check: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT
    ) -> Any:
        """Reload the page until ``check`` finds what it looks for (pages do not refresh)."""

        def fresh() -> Any:
            self.driver.refresh()
            return check()

        return self.wait(fresh, what, timeout)

    def screenshot(self, path: Path) -> None:
        """The whole page, however long, as a PNG (chromium's DevTools capture)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    @contextmanager
    def kept_on_failure(self, directory: Path) -> Iterator[None]:
        """On an exception, save the page's screenshot and HTML and name them in the error."""
        try:
            yield
        except BaseException as exc:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self.driver.save_screenshot(str(directory / "failure.png"))
                (directory / "failure.html").write_text(self.driver.page_source)
                exc.add_note(f"the page at failure: {directory}/failure.png and failure.html")
            except WebDriverException:
                pass
            raise

    def quit(self) -> None:
        self.driver.quit()
