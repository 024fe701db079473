"""The README's picture of the page: a real headless Chromium showing a photo and its class activation map.

``python scripts/screenshot_page.py --models-dir models --model resnet50-imagenet --photo cat.jpg --out
docs/page-explain.png`` starts ``python -m service`` on a free loopback port, opens the page, ticks "Show
where the model looked", uploads the photo with 10 crops and saves the window once the overlay is drawn.
Needs selenium, Debian's ``chromium`` and ``chromium-driver``, and a model with a feature output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the service exited before it was ready")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready")


def screenshot(base: str, model: str, photo: Path, out: Path, size: tuple[int, int]) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(
            lambda d: (
                model in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#model option")]
            )
        )
        Select(driver.find_element(By.ID, "model")).select_by_value(model)
        driver.execute_script(
            "arguments[0].click()", driver.find_element(By.CSS_SELECTOR, 'input[name="crops"][value="10"]')
        )
        driver.execute_script("arguments[0].click()", driver.find_element(By.ID, "explain"))
        driver.find_element(By.ID, "file").send_keys(str(photo.resolve()))
        wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("data-ready") == "true")
        time.sleep(0.5)  # the bars' width transition
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="resnet50-imagenet")
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "page-explain.png")
    parser.add_argument("--width", type=int, default=900)
    parser.add_argument("--height", type=int, default=1320)
    args = parser.parse_args()
    port = free_port()
    env = {
        **os.environ,
        "SERVE_MODELS_DIR": str(args.models_dir),
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
        "SERVE_GRPC_PORT": "0",
        "SERVE_PROVIDERS": "cpu",
        "SERVE_WATCH": "false",
    }
    env.pop("SERVE_AUTH_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        screenshot(base, args.model, args.photo, args.out, (args.width, args.height))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
