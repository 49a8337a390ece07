"""The search page at ``/``, served by the app and driven in a real headless Chromium (Debian's
``chromium`` + ``chromium-driver``, through Selenium): type a query, see ten results, change the
mode, apply a facet, open the explain bars. Screenshots go to pytest's tmp path."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from trident_search.service.app import create_app
from trident_search.settings import Settings

from conftest import require

KEY = "page-key-123"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class Unclosed:
    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def _app(engine: Any, index_dir: Path, **settings: Any) -> Any:
    return create_app(Settings(index=index_dir, **settings), loader=lambda s: Unclosed(engine),
                      load_in_background=False)


def test_page_and_assets_are_served(engine: Any, index_dir: Path) -> None:
    with TestClient(_app(engine, index_dir, api_key=KEY, api_key_header="X-Trident-Key")) as client:
        page = client.get("/")  # public: the page holds no data
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'content="X-Trident-Key"' in page.text and "/static/app.js" in page.text
        assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/static/style.css").status_code == 200
        assert client.get("/static/../app.py").status_code == 404
        assert client.get("/static/index.html").status_code == 404
        assert client.post("/v1/search", json={"query": "x"}).status_code == 401  # the API stays protected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(engine: Any, index_dir: Path) -> Iterator[str]:
    uvicorn = require("uvicorn")
    port = _free_port()
    config = uvicorn.Config(_app(engine, index_dir, api_key=KEY), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = require("selenium.webdriver")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_search_page_in_a_real_browser(server: str, browser: Any, engine: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 120)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def status_changes(before: str) -> None:
        wait.until(lambda d: d.find_element(By.ID, "status").text not in (before, "Searching…", ""))

    browser.get(server + "/")
    assert browser.title == "Trident search"
    browser.find_element(By.ID, "more").click()  # open the options; the server needs an API key
    browser.find_element(By.ID, "apikey").send_keys(KEY)
    browser.find_element(By.ID, "q").send_keys("vitamin D deficiency and bone density", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 10)
    status = browser.find_element(By.ID, "status").text
    assert "mode hybrid" in status, status
    assert "total" in browser.find_element(By.ID, "timings").text
    browser.save_screenshot(str(shots / "1-hybrid.png"))

    # change the mode (the page re-searches on change)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mode option")) == len(engine.retrievers) + 1)
    Select(browser.find_element(By.ID, "mode")).select_by_value("bm25")
    wait.until(lambda d: "mode bm25" in d.find_element(By.ID, "status").text)
    assert browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    browser.save_screenshot(str(shots / "2-bm25.png"))

    # ask for a facet, then apply one of its values as a filter
    browser.find_element(By.ID, "facets").send_keys("lang")
    before = browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "go").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".facet-value[data-value='\"de\"']")))
    browser.find_element(By.CSS_SELECTOR, ".facet-value[data-value='\"de\"']").send_keys(Keys.ENTER)  # keyboard
    wait.until(lambda d: d.find_element(By.ID, "filters").get_attribute("value") == '{"lang":"de"}')
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".facet-value[aria-pressed='true']"))
    metas = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#results .hit .meta")]
    assert metas and all('lang: "de"' in m for m in metas), metas
    assert before
    browser.save_screenshot(str(shots / "3-facet.png"))

    # open the explain bars of the first hit
    first = browser.find_element(By.CSS_SELECTOR, "#results .hit details.explain summary")
    first.send_keys(Keys.ENTER)  # a <summary> opens from the keyboard
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .hit details.explain").get_attribute("open"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .hit:first-child .explain-row")
    assert len(rows) == 1 and rows[0].is_displayed()  # bm25 mode: one retriever
    assert rows[0].find_element(By.CSS_SELECTOR, ".bar span").get_attribute("style").startswith("width:")
    browser.save_screenshot(str(shots / "4-explain.png"))

    # hybrid again: one bar per retriever
    Select(browser.find_element(By.ID, "mode")).select_by_value("hybrid")
    wait.until(lambda d: "mode hybrid" in d.find_element(By.ID, "status").text)
    browser.find_element(By.CSS_SELECTOR, "#results .hit details.explain summary").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .hit:first-child .explain-row")
    assert len(rows) == len(engine.retrievers) and all(r.is_displayed() for r in rows)
    browser.save_screenshot(str(shots / "5-hybrid-explain.png"))

    # readable on a phone: one column, no horizontal scrolling
    browser.set_window_size(390, 844)
    wait.until(lambda d: d.execute_script("return window.innerWidth") <= 400)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    inner = browser.execute_script("return window.innerWidth")
    assert width <= inner, (width, inner)
    facets = browser.find_element(By.ID, "facet-list").rect
    results = browser.find_element(By.ID, "results").rect
    assert facets["y"] > results["y"]  # facets move below the results
    browser.save_screenshot(str(shots / "6-phone.png"))
    assert len(list(shots.glob("*.png"))) == 6
