"""End to end in headless Chromium: open the page, upload a photo, read the labels shown; and
`/docs` with every host but 127.0.0.1 unreachable, where "Try it out" sends a photo.

Skips cleanly when Chromium, chromedriver or selenium is absent. The screenshot is kept in
``test-artifacts/`` (a test artifact; ignored by git).
"""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium")
pytest.importorskip("uvicorn")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver absent")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
#: No name resolves except 127.0.0.1: a page that needs a CDN cannot load it.
OFFLINE = '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'


def chrome(window="390,844", *extra):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={window}", *extra):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def _serve(bundle_path):
    """Serve a bundle on a free port in a thread; yields its URL."""
    import uvicorn

    from fashionnet.server.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(bundle_path, backend="keras"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(tiny_bundle):
    yield from _serve(tiny_bundle.bundle.path)


@pytest.fixture(scope="module")
def open_set_url(two_colour_bundle):
    yield from _serve(two_colour_bundle.bundle.path)


def open_page(driver, url: str) -> str:
    """Load the page, wait for the model's description, return the label-set sentence."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.ID, "model").text.startswith("Heads:"))
    return driver.find_element(By.ID, "labels").text


def upload(driver, photo) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")


def test_upload_shows_each_heads_labels(server_url, tiny_dataset):
    from selenium.webdriver.common.by import By

    driver = chrome()
    try:
        # The label set in plain sight before any upload, and the model card a click away.
        known = open_page(driver, server_url)
        assert "only knows color: black, blue, green, red" in known and "category: dress" in known
        assert driver.find_element(By.ID, "card").get_attribute("href").endswith("/v1/model/card")
        upload(driver, sorted((tiny_dataset / "red_dress").iterdir())[0])
        labels = {el.get_attribute("data-head"): el.find_element(By.CLASS_NAME, "label").text
                  for el in driver.find_elements(By.CLASS_NAME, "head")}
        assert set(labels) == {"color", "category"}
        assert labels["color"].split(": ")[1] in {"black", "blue", "green", "red"}
        assert labels["category"].split(": ")[1] in {"dress", "jeans", "shirt", "shoes"}
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_page.png"))
        assert (ARTIFACTS / "web_page.png").stat().st_size > 1000
    finally:
        driver.quit()


def test_page_states_busy_error_and_model(server_url, tmp_path):
    """No broken image before the first upload; an unreadable file shows an error and no
    stale result; the model's heads and version are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome()
    try:
        driver.get(server_url + "/")
        WebDriverWait(driver, 20).until(lambda d: "model " in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "preview").is_displayed()
        assert not driver.find_element(By.ID, "busy").is_displayed()
        bad = tmp_path / "bad.jpg"
        bad.write_text("not an image")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-failed") == "1")
        assert "not an image" in driver.find_element(By.ID, "error").text
        assert not driver.find_element(By.ID, "result").is_displayed()
    finally:
        driver.quit()


def test_docs_work_offline_and_try_it_out_sends_a_file(server_url, tiny_dataset):
    """/docs renders with the network closed to all but the server, every resource it loads
    comes from the server, and "Try it out" on POST /v1/predict offers a file input that
    sends the photo and gets the labels back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome("1280,1000", OFFLINE)
    try:
        driver.get(server_url + "/docs")
        path = WebDriverWait(driver, 30).until(lambda d: d.find_element(
            By.CSS_SELECTOR, '.opblock-post .opblock-summary-path[data-path="/v1/predict"]'))
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)")
        assert any(r.endswith("/swagger-ui-bundle.js") for r in resources), resources
        assert [r for r in resources if not r.startswith(server_url + "/")] == []
        block = path.find_element(By.XPATH, "ancestor::div[contains(@class, 'opblock-post')]")
        path.click()
        WebDriverWait(driver, 10).until(
            lambda d: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
        upload = WebDriverWait(driver, 10).until(
            lambda d: block.find_element(By.CSS_SELECTOR, 'input[type="file"]'))
        upload.send_keys(str(sorted((tiny_dataset / "red_dress").iterdir())[0]))
        block.find_element(By.CSS_SELECTOR, ".execute").click()
        status = WebDriverWait(driver, 30).until(lambda d: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"))
        assert status.text.strip() == "200"
        body = block.find_element(By.CSS_SELECTOR,
                                  ".live-responses-table .response .response-col_description")
        assert '"color"' in body.text and '"category"' in body.text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "docs_page.png"))
    finally:
        driver.quit()


def test_unknown_colour_reads_not_one_of(open_set_url, two_colour_dataset):
    """A model that knows black and red says so before the first upload, and shows a green
    garment's colour as "not one of: black, red" with its closest guess, not as bars."""
    from selenium.webdriver.common.by import By

    driver = chrome()
    try:
        known = open_page(driver, open_set_url)
        assert "only knows color: black, red" in known
        assert "not one of these" in known and "(color" in known
        photos = sorted((two_colour_dataset["other"] / "green_dress").iterdir())
        shown = []
        for photo in photos:
            upload(driver, photo)
            box = driver.find_element(By.CSS_SELECTOR, '.head[data-head="color"]')
            shown.append((box.get_attribute("data-unknown"),
                          box.find_element(By.CLASS_NAME, "label").text,
                          len(box.find_elements(By.CLASS_NAME, "bar"))))
        unknown = [s for s in shown if s[0] == "1"]
        assert len(unknown) >= 2, shown
        for _, title, bars in unknown:
            assert title == "color: not one of: black, red" and bars == 0
        guess = driver.find_elements(By.CSS_SELECTOR, '.head[data-head="color"] p.guess')
        if shown[-1][0] == "1":
            assert guess[0].text.startswith("Closest: ")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_page_unknown.png"))
    finally:
        driver.quit()
