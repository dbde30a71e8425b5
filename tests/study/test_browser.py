"""A real browser drives the seam inspector: JupyterLab on localhost, headless Chromium (Debian's package)
through Playwright. The notebook (04, smoke parameters, reusing the runs the session's smoke reproduction
trained) runs in the lab, a slider moves, and the picture and the seam score must change.

Needs ``apt-get install chromium`` (done by .ci/run); skipped, saying so, where /usr/bin/chromium is absent.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill as pm
import pytest

from patchlab.study import params as NB
from patchlab.study import reproduce

CHROMIUM = Path(os.environ.get("PATCHLAB_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(smoke):
    """JupyterLab serving the smoke reproduction's root, which holds notebook 04 with the smoke parameters
    injected; its runs are already trained."""
    root = smoke[0]
    _, plan = reproduce.resolve_profile("smoke", root=str(root))
    params = plan["04_seam_inspector"]
    pm.execute_notebook(str(NB.notebook_path("04_seam_inspector")), str(root / "inspector.ipynb"),
                        parameters=params, prepare_only=True, progress_bar=False)
    port, token = _free_port(), secrets.token_hex(16)
    state = root / ".jupyter-state"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"), "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (root / "jupyterlab.log").read_text())
                time.sleep(0.5)
        yield {"url": url, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_seam_inspector_reacts_to_a_slider_in_a_real_browser(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(f"{lab['url']}/lab/tree/inspector.ipynb?token={lab['token']}")
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=90_000)
            page.wait_for_function("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                                   "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                                   " === 'idle'", timeout=90_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            score = page.locator(".patchlab-seam")
            score.wait_for(state="visible", timeout=240_000)
            image = page.locator("img.patchlab-image")
            image.wait_for(state="visible", timeout=30_000)
            page.screenshot(path=str(lab["root"] / "before.png"))
            before_score, before_image = score.inner_text(), image.screenshot()
            assert float(before_score) > 0

            # the denoising-step slider starts at the finished image: jump to the first (noisiest) step
            handle = page.locator(".patchlab-frame .noUi-handle")
            handle.focus()
            page.keyboard.press("Home")
            page.wait_for_function(f"document.querySelector('.patchlab-seam').innerText !== '{before_score}'",
                                   timeout=30_000)
            page.wait_for_timeout(500)  # the picture updates in the same message; give the <img> a moment
            after_score, after_image = score.inner_text(), image.screenshot()
            page.screenshot(path=str(lab["root"] / "after.png"))
            assert after_score != before_score
            assert after_image != before_image
            assert "step 0 of" in page.locator(".patchlab-score").inner_text()
        finally:
            browser.close()
            shutil.copy(lab["root"] / "jupyterlab.log", tmp_path / "jupyterlab.log")
