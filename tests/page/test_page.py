"""The page for people (GET /): served by the app, self-contained, and working in a real headless Chromium
(Debian's `chromium` and `chromium-driver`): choose or drop a photo, see the expected label, the top-5 bars
and the timings.

The browser tests start `python -m service` on a free loopback port with tiny contract-conforming models
(tests/contract_models.py): "colour" labels a photo by its dominant colour, so a mostly-blue photo must
come out "blue"; "colour-cam" answers the same with a feature output, so the page can overlay where it
looked (the class activation map). When the shipped model (models/resnet20-cifar10.onnx) exists it is served
too, and the cat photo must come out "cat".
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
from contract_models import colour_cam_model, colour_model, free_port, publish

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
    publish(models / "colour-cam.onnx", colour_cam_model(crop=32, resize=36, cell=4, scale=8.0))
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


def _split_photo(path: Path) -> Path:
    """A 200x120 JPEG: red on its left 40%, blue on the rest (the model answers blue, found on the right)."""
    from PIL import Image

    image = Image.new("RGB", (200, 120), (30, 40, 220))
    image.paste((220, 30, 20), (0, 0, 80, 120))
    image.save(path, "JPEG", quality=95)
    return path


def _overlay(browser, wait):
    from selenium.webdriver.common.by import By

    overlay = browser.find_element(By.ID, "overlay")
    wait.until(lambda d: overlay.is_displayed() and overlay.get_attribute("data-ready") == "true")
    return overlay


@pytest.mark.browser
def test_the_explain_toggle_overlays_where_the_model_looked(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    photo = _split_photo(tmp_path / "split.jpg")
    wait = _open(browser, server, "colour-cam", crops=10)
    toggle = browser.find_element(By.ID, "explain")
    if not toggle.is_selected():
        browser.execute_script("arguments[0].click()", toggle)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    preds, _ = _results(browser, wait, expected_crops=10)
    overlay = _overlay(browser, wait)
    browser.save_screenshot(str(tmp_path / "overlay.png"))

    # The overlay shows what the API answers for the same photo: the top-1 class and its map.
    api = httpx.post(
        f"{server}/classify",
        params={"model": "colour-cam", "crops": 10, "explain": "true"},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        timeout=30,
    ).json()
    (explained,) = api["explanations"]
    assert preds[0][0] == explained["label"] == "blue"
    assert browser.find_element(By.ID, "explain-label").text == "blue"
    assert overlay.get_attribute("data-heatmap") == explained["heatmap_png"]
    # Drawn over the photo, as large as it, and warm (red) where the blue is: the right of the photo.
    image = browser.find_element(By.ID, "photo")
    canvas = browser.find_element(By.ID, "heatmap")
    assert canvas.size == image.size and canvas.location == image.location and image.size["width"] > 100
    red_by_column = browser.execute_script(
        """
        const c = document.getElementById("heatmap");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const sums = new Array(c.width).fill(0);
        for (let i = 0; i < d.length; i += 4) sums[(i / 4) % c.width] += d[i] - d[i + 2];
        return [c.width, sums];
        """
    )
    width, sums = red_by_column
    assert width == 200
    left, right = sum(sums[:70]) / 70, sum(sums[90:]) / 110
    assert right > left + 50 * 120, (left, right)  # red minus blue, per column of 120 pixels

    # Off again: no overlay, and the request no longer asks for maps.
    browser.execute_script("arguments[0].click()", toggle)
    wait.until(lambda d: not d.find_element(By.ID, "overlay").is_displayed())


@pytest.mark.browser
def test_explain_on_a_model_without_features_says_so(browser, server):
    from selenium.webdriver.common.by import By

    wait = _open(browser, server, "colour", crops=1)
    toggle = browser.find_element(By.ID, "explain")
    if not toggle.is_selected():
        browser.execute_script("arguments[0].click()", toggle)
    browser.find_element(By.ID, "file").send_keys(str(FIXTURES / "dog.jpg"))
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: "explanations not available for this model" in status.text)
    assert status.get_attribute("class") == "error"
    assert not browser.find_element(By.ID, "overlay").is_displayed()
