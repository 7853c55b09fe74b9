"""notebooks/04-inspect.ipynb in real JupyterLab and headless Chromium (Playwright).

JupyterLab runs in the background (``--allow-root``, a token, loopback, a free port, scratch
JUPYTER_* dirs) on a copy of notebook 04 in a temporary folder with a fresh journal. Chromium
(Debian's, ``/usr/bin/chromium``: scripts/browser_setup.sh installs it; never
``playwright install``) opens it, runs all cells, waits for the dashboard to render AS WIDGETS
(the Tab bar and the lease panel's buttons, not the ``Dashboard(children=...)`` text repr),
presses "Force release" on the lease ``export-9`` the notebook holds, then "Confirm", and the
test reads the journal afterwards: owner gone, token bumped. Screenshots of each tab go to
``screenshots/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NOTEBOOK = "04-inspect.ipynb"
WAIT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a copy of notebook 04; yields (base_url, token, journal path)."""
    assert os.path.exists(CHROMIUM), \
        f"{CHROMIUM} is missing: run `bash scripts/browser_setup.sh` (apt-get install chromium)"
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, nb_dir / NOTEBOOK)
    journal = tmp_path / "journal.duckdb"
    scratch = tmp_path / "jupyter"
    port, token = _free_port(), f"contd-{os.urandom(8).hex()}"
    env = dict(os.environ)
    env.update(JUPYTER_CONFIG_DIR=str(scratch / "config"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
               JUPYTER_DATA_DIR=str(scratch / "data"), IPYTHONDIR=str(scratch / "ipython"),
               CONTD_JOURNAL=str(journal),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    # the venv's python3 kernelspec (JUPYTER_DATA_DIR moved away from the user's)
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" /
                                                            "jupyter"), env.get("JUPYTER_PATH")]))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={nb_dir}", "--allow-root", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabServerApp.workspaces_dir={scratch / 'workspaces'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-4000:]
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("JupyterLab did not answer: " + (tmp_path / "lab.log").read_text())
        yield base, token, journal
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _shot(page, name: str, full: bool = False) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=full)
    return path


def test_dashboard_renders_as_widgets_and_force_release_works(lab):
    from contd_nb.persistence.duckdb_store import DuckDBStore

    base, token, journal = lab
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text[:300]))
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}",
                      wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=WAIT_MS)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=WAIT_MS)
            page.wait_for_selector("#jp-main-statusbar :text('| Idle')", timeout=WAIT_MS)
            page.wait_for_timeout(1000)
            if page.locator(".jp-Dialog").count():
                page.locator(".jp-Dialog .jp-mod-accept").click()
            toast = page.locator(".jp-Notification-Toast-Close, "
                                 ".Toastify__toast button:has-text('No')")
            if toast.count():
                toast.first.click()
            page.locator(".lm-MenuBar-itemLabel").filter(
                has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel").filter(
                has_text=re.compile(r"^Run All Cells$")).click()

            # the first dashboard, rendered as widgets: a Tab bar with our four titles
            dash = page.locator(".widget-tab").first
            dash.wait_for(timeout=WAIT_MS)
            tabs = dash.locator(".lm-TabBar-tab")
            tabs.filter(has_text="Recovery").wait_for(timeout=WAIT_MS)
            assert [t.strip() for t in tabs.all_inner_texts()] == \
                ["Journal", "Leases", "Retries", "Recovery"]
            dash.locator(".widget-select select").first.wait_for(timeout=WAIT_MS)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=WAIT_MS)
            # no widget fell back to its text repr
            assert page.locator(".jp-OutputArea-output pre:has-text('Dashboard(children=')") \
                .count() == 0
            assert page.locator(".jp-OutputArea-output pre:has-text('LeasePanel(children=')") \
                .count() == 0
            dash.scroll_into_view_if_needed()
            # the journal browser shows the crashed workflow's traceback-free completion
            assert "batch-7" in dash.locator(".widget-select select").first.inner_text()
            _shot(page, "04-journal-browser.png")

            tabs.filter(has_text="Retries").click()
            dash.locator(".widget-image").first.wait_for(timeout=WAIT_MS)
            _shot(page, "04-retry-timeline.png")
            tabs.filter(has_text="Recovery").click()
            dash.locator(".widget-image").nth(1).wait_for(timeout=WAIT_MS)
            _shot(page, "04-recovery.png")

            tabs.filter(has_text="Leases").click()
            row = dash.locator(".widget-vbox").filter(
                has=page.locator(".widget-html-content:has-text('export-9')")).filter(
                has=page.locator("button:has-text('Force release')")).last
            countdown = row.locator(".widget-html-content",
                                    has_text=re.compile(r"expires in \d+s"))
            countdown.first.wait_for(timeout=WAIT_MS)
            _shot(page, "04-leases.png")
            row.locator("button:has-text('Force release')").click()
            confirm = row.locator("button:has-text('Confirm')")
            confirm.wait_for(state="visible", timeout=WAIT_MS)
            _shot(page, "04-leases-confirm.png")
            confirm.click()
            dash.locator(".widget-html-content:has-text('force-released export-9')") \
                .wait_for(timeout=WAIT_MS)
            _shot(page, "04-leases-released.png")
        except Exception:
            _shot(page, "04-failure.png", full=True)
            raise
        finally:
            browser.close()

    # the journal, read from this process once the kernel let go of it
    store = DuckDBStore(journal, busy_timeout=60)
    try:
        lease = store.get_lease("export-9")
        assert lease.owner_id is None
        assert lease.token == 2  # the notebook took token 1; the force-release bumped it
        assert store.get_workflow("batch-7").status == "completed"
    finally:
        store.close()
    assert not [e for e in errors if "widget" in e.lower()], errors
