"""The page for people (GET /): served by the app, self-contained, and working in a real headless Chromium
(Debian's `chromium` and `chromium-driver`): choose or drop a photo, see the expected label, the top-5 bars
and the timings.

The browser tests start `python -m service` on a free loopback port with tiny contract-conforming models
(tests/contract_models.py): "colour" labels a photo by its dominant colour, so a mostly-blue photo must
come out "blue". When the shipped model (models/resnet20-cifar10.onnx) exists it is served too, and the cat
photo must come out "cat".
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contract_models import colour_model, free_port, publish

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "deploy" / "fixtures"
INDEX = ROOT / "service" / "static" / "index.html"
SHIPPED_MODEL = ROOT / "models" / "resnet20-cifar10.onnx"

httpx = pytest.importorskip("httpx")


def test_page_has_no_external_assets():
    html = INDEX.read_text()
    # Every src/href and every url() is local (relative or absolute path); nothing from a CDN.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html) + re.findall(r"url\(([^)]*)\)", html)
    external = [r for r in refs if re.match(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", r, re.I)]
    assert refs, "the page links to nothing at all?"
    assert not external, f"external assets: {external}"
    assert "<script src" not in html and "@import" not in html


def test_root_serves_the_page():
    app_module = pytest.importorskip("service.app", reason="service/app.py is not there yet")
    from fastapi.testclient import TestClient

    os.environ.setdefault("SERVE_PROVIDERS", "cpu")
    app = app_module.create_app()
    with TestClient(app) as client:
        resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert 'id="predictions"' in resp.text and "/classify?" in resp.text


# ---------------------------------------------------------------------------------------------------------
# In a real browser


def _browser_skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "no browser: apt-get install chromium chromium-driver (Debian packages)"
    try:
        import service.app  # noqa: F401
    except ImportError as exc:
        return f"the service cannot be imported yet: {exc}"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    models = tmp_path_factory.mktemp("models")
    publish(models / "colour.onnx", colour_model(crop=32, resize=36, scale=8.0))
    if SHIPPED_MODEL.exists():
        shutil.copy(SHIPPED_MODEL, models / SHIPPED_MODEL.name)
    port = free_port()
    env = {
        **os.environ,
        "SERVE_MODELS_DIR": str(models),
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
        "SERVE_PROVIDERS": "cpu",
    }
    for key in ("SERVE_AUTH_TOKEN", "SERVE_ADMIN_TOKEN"):
        env.pop(key, None)
    log = tmp_path_factory.mktemp("log") / "service.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, server, model: str, crops: int):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server + "/")
    # The page rebuilds the model list when /models answers: an option read mid-rebuild is stale, so retry.
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    options = (By.CSS_SELECTOR, "#model option")
    wait.until(lambda d: model in [o.get_attribute("value") for o in d.find_elements(*options)])
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    radio = browser.find_element(By.CSS_SELECTOR, f'input[name="crops"][value="{crops}"]')
    browser.execute_script("arguments[0].click()", radio)
    wait.until(ec.element_located_to_be_selected((By.CSS_SELECTOR, f'input[name="crops"][value="{crops}"]')))
    return wait


def _results(browser, wait, expected_crops: int):
    from selenium.webdriver.common.by import By

    def shown(d):
        meta = d.find_element(By.ID, "result-meta").text
        rows = d.find_elements(By.CSS_SELECTOR, "#predictions li.pred")
        return rows and f"{expected_crops} crop" in meta and rows

    rows = wait.until(shown)
    preds = [
        (
            r.get_attribute("data-label"),
            float(r.get_attribute("data-probability")),
            r.find_element(By.CSS_SELECTOR, ".prob").text,
            r.find_element(By.CSS_SELECTOR, ".bar > div").value_of_css_property("width"),
        )
        for r in rows
    ]
    timings = [
        tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td"))
        for tr in browser.find_elements(By.CSS_SELECTOR, "#timings tr")
    ]
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error", browser.find_element(
        By.ID, "status"
    ).text
    return preds, timings


def _api(server, model, crops, photo: Path):
    resp = httpx.post(
        f"{server}/classify",
        params={"model": model, "top_k": 5, "crops": crops},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        timeout=30,
    )
    resp.raise_for_status()
    return resp.json()


@pytest.mark.browser
def test_upload_a_photo_shows_the_expected_label(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    photo = FIXTURES / "airplane.jpg"  # a mostly-blue sky
    wait = _open(browser, server, "colour", crops=10)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    preds, timings = _results(browser, wait, expected_crops=10)
    browser.save_screenshot(str(tmp_path / "page.png"))

    assert preds[0][0] == "blue"
    # The page shows what the API answers for the same photo, model and crops, best first.
    api = _api(server, "colour", 10, photo)
    assert [p[0] for p in preds] == [p["label"] for p in api["predictions"]]
    for (_, prob, text, width), p in zip(preds, api["predictions"], strict=True):
        assert abs(prob - p["probability"]) < 1e-6
        assert text == f"{p['probability'] * 100:.1f}%"
        assert float(width.removesuffix("px")) > 0
    widths = [float(p[3].removesuffix("px")) for p in preds]
    assert widths == sorted(widths, reverse=True)
    assert len(timings) == len(api["timings"]) > 0 and all(len(t) == 2 and t[1] for t in timings)


@pytest.mark.browser
def test_drop_a_photo_with_one_crop(browser, server):
    photo = FIXTURES / "dog.jpg"  # mostly red
    wait = _open(browser, server, "colour", crops=1)
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dog.jpg", {type: "image/jpeg"}));
        const drop = document.getElementById("drop");
        for (const type of ["dragenter", "dragover", "drop"]) {
          drop.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
        """,
        base64.b64encode(photo.read_bytes()).decode(),
    )
    preds, _ = _results(browser, wait, expected_crops=1)
    assert preds[0][0] == "red"
    assert [p[0] for p in preds] == [p["label"] for p in _api(server, "colour", 1, photo)["predictions"]]


@pytest.mark.browser
def test_shipped_model_labels_the_cat(browser, server):
    from selenium.webdriver.common.by import By

    if not SHIPPED_MODEL.exists():
        pytest.skip(f"{SHIPPED_MODEL.relative_to(ROOT)} is not there yet")
    wait = _open(browser, server, SHIPPED_MODEL.stem, crops=10)
    browser.find_element(By.ID, "file").send_keys(str(FIXTURES / "cat.jpg"))
    preds, _ = _results(browser, wait, expected_crops=10)
    assert preds[0][0] == "cat"
    assert len(preds) == 5
