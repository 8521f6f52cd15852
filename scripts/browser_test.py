"""Real-browser test: the notebooks with widgets, in JupyterLab, in Chromium.

`make browser-test` runs this (after installing Debian's chromium and the playwright
package; playwright only drives the system browser, it never downloads one). Steps:

1. copy the notebooks that have widgets (ipywidgets or a ``*_explorer(`` call) to a
   temporary folder, so that JupyterLab's autosave never touches the repository;
2. start JupyterLab on 127.0.0.1, a free port and a random token, with every network
   feature off (news, update check, extension manager) and fresh config folders;
3. in headless Chromium, open each notebook, run all cells, and check: no cell has an
   error output, every cell ran, every plot rendered as an image, every widget rendered;
   then move one slider and check that the widget's output changed;
4. stop the server by its PID (also when something fails).

Exit code 0 when every notebook passes. Usage: python scripts/browser_test.py [NAMES...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 180  # one notebook's Run All
SLIDER_TIMEOUT_S = 60  # the output's redraw after a slider moved


def widget_notebooks(folder: Path) -> list[Path]:
    """The notebooks whose code cells use ipywidgets or call a ``*_explorer(``."""
    found = []
    for path in sorted(folder.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if "ipywidgets" in code or re.search(r"_explorer\(", code):
            found.append(path)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the JupyterLab server ----------------------------------------------------------
def start_server(root_dir: Path, home: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port, serving root_dir, with its config, data, runtime and
    settings folders under ``home`` and nothing that reaches the network."""
    for sub in ("config/labconfig", "data", "runtime", "settings/@jupyterlab/notebook-extension",
                "workspaces"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    # the front end's news toast and update check, off
    (home / "config/labconfig/page_config.json").write_text(json.dumps({"disabledExtensions": {
        "@jupyterlab/apputils-extension:announcements": True}}))
    # render every cell (no windowing), so every output is in the page to be checked
    (home / "settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:  # CI and the course machines run as root
        cmd.append("--allow-root")
    log = open(home / "jupyterlab.log", "wb")
    return subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(server: subprocess.Popen, base: str, token: str, home: Path,
               timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n" + server_log(home))
        try:
            req = urllib.request.Request(f"{base}/api/status",
                                         headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n" + server_log(home))


def server_log(home: Path) -> str:
    path = home / "jupyterlab.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's PID (it shuts its kernels down), SIGKILL if it hangs."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


# ---- in the browser ---------------------------------------------------------------------
NOTEBOOK_READY = """name => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!(k && w.context.path === name && k.connectionStatus === 'connected' &&
            k.status === 'idle' && w.content.model);
}"""

# JupyterLab is loaded once; each notebook is opened in it, then closed without saving.
OPEN = """async name => { await window.jupyterapp.commands.execute(
  'docmanager:open', {path: name, factory: 'Notebook'}); }"""
CLOSE = """async () => {
  const w = window.jupyterapp.shell.currentWidget;
  await w.sessionContext.shutdown();
  w.dispose();
}"""

RUN_ALL = """() => {
  window.__runAll = undefined;
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => { window.__runAll = {ok: ok}; }, e => { window.__runAll = {ok: false, error: String(e)}; });
}"""

# What the notebook holds after Run All, from its model and from the page.
REPORT = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.model.cells;
  const out = {code: 0, unexecuted: [], errors: [], png: 0};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.code += 1;
    if (c.executionCount === null) out.unexecuted.push(i);
    for (const o of c.outputs.toJSON()) {
      if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
      if (o.data && o.data['image/png']) out.png += 1;
    }
  }
  const node = w.content.node;
  const imgs = [...node.querySelectorAll('.jp-OutputArea-output img')];
  out.images = imgs.length;
  out.brokenImages = imgs.filter(im => !(im.complete && im.naturalWidth > 0)).length;
  out.sliders = node.querySelectorAll('.widget-slider').length;
  out.widgetErrors = [...node.querySelectorAll('.jp-OutputArea-output')]
    .map(e => e.innerText).filter(t => /Error displaying widget|Error rendering output/.test(t));
  return out;
}"""

# The images inside the widget that holds the first slider (its Output widget's plot).
WIDGET_IMAGES = """() => {
  const slider = window.jupyterapp.shell.currentWidget.content.node.querySelector('.widget-slider');
  const box = slider.closest('.jp-OutputArea-output');
  return [...box.querySelectorAll('img')].map(im => im.src).join('|');
}"""


def open_lab(ctx, base: str, token: str):
    """A page with JupyterLab loaded in an empty workspace of its own."""
    page = ctx.new_page()
    page.goto(f"{base}/lab/workspaces/browser-test?reset&token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell",
                           timeout=90_000, polling=250)
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    page.wait_for_function("() => window.jupyterapp.commands.hasCommand('docmanager:open')",
                           timeout=30_000, polling=250)
    return page


def check_notebook(page, base: str, token: str, name: str, shots: Path) -> list[str]:
    """Open, run all, check; move a slider, check. The problems found (empty: passed)."""
    problems = []
    try:
        t0 = time.monotonic()
        page.evaluate(OPEN, name)
        page.wait_for_function(NOTEBOOK_READY, arg=name, timeout=90_000, polling=250)
        page.evaluate(RUN_ALL)
        page.wait_for_function("() => window.__runAll !== undefined",
                               timeout=RUN_TIMEOUT_S * 1000, polling=500)
        page.wait_for_function(NOTEBOOK_READY, arg=name, timeout=60_000, polling=250)
        run = page.evaluate("() => window.__runAll")
        # give the last images a moment to decode
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output img')]"
            ".every(im => im.complete)", timeout=15_000)
        rep = page.evaluate(REPORT)
        ran_s = time.monotonic() - t0
        if not run.get("ok"):
            problems.append(f"Run All did not succeed: {run}")
        problems += [f"error output: {e}" for e in rep["errors"]]
        if rep["unexecuted"]:
            problems.append(f"code cells never ran: {rep['unexecuted']}")
        if rep["png"] == 0:
            problems.append("no plot in the outputs")
        if rep["images"] < rep["png"] or rep["brokenImages"]:
            problems.append(f"{rep['png']} plots in the outputs, {rep['images']} <img> in the "
                            f"page, {rep['brokenImages']} of them not rendered")
        if rep["sliders"] == 0:
            problems.append("no widget slider rendered")
        problems += [f"widget did not render: {t[:200]}" for t in rep["widgetErrors"]]
        print(f"  {name}: ran {rep['code']} code cells in {ran_s:.0f} s; {rep['png']} plots, "
              f"{rep['images']} images rendered, {rep['sliders']} sliders", flush=True)
        if rep["sliders"]:
            problems += move_slider(page, name)
    except Exception as e:  # a timeout or a page error: report it, keep the others going
        problems.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    if problems:
        shot = shots / f"{Path(name).stem}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            problems.append(f"screenshot: {shot}")
        except Exception:
            pass
    try:  # shut the kernel down and close the notebook before the next one opens
        page.evaluate(CLOSE)
    except Exception:
        pass
    shutdown_kernels(base, token)
    return problems


def shutdown_kernels(base: str, token: str) -> None:
    """Shut down every kernel the server still runs (through its REST API)."""
    auth = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", headers=auth),
                                timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        req = urllib.request.Request(f"{base}/api/kernels/{k['id']}", headers=auth,
                                     method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def move_slider(page, name: str) -> list[str]:
    """Press the right arrow on the first slider's handle (one step), and wait until the
    widget's plot is redrawn. Falls back to dragging the handle with the mouse."""
    before = page.evaluate(WIDGET_IMAGES)
    if not before:
        return ["the slider's widget shows no image"]
    slider = page.locator(".jp-Notebook .widget-slider").first
    readout = slider.locator(".widget-readout")
    value_before = readout.inner_text()
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("ArrowRight")
    t0 = time.monotonic()
    if readout.inner_text() == value_before:  # no keyboard support: drag it
        box = handle.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
    value_after = readout.inner_text()
    if value_after == value_before:
        return [f"the slider did not move (readout {value_before!r})"]
    try:
        page.wait_for_function(f"() => ({WIDGET_IMAGES})() !== {json.dumps(before)}"
                               f" && ({WIDGET_IMAGES})() !== ''",
                               timeout=SLIDER_TIMEOUT_S * 1000, polling=250)
    except Exception:
        return [f"slider moved {value_before} -> {value_after}, but the plot did not change "
                f"within {SLIDER_TIMEOUT_S} s"]
    print(f"  {name}: slider {value_before} -> {value_after}, plot redrawn in "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: every "
                        "notebook with widgets)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"{CHROMIUM} not found: apt-get install -y chromium (or make browser-test)")
        return 1
    from playwright.sync_api import sync_playwright

    notebooks = ([ROOT / "notebooks" / n for n in args.names] if args.names
                 else widget_notebooks(ROOT / "notebooks"))
    if not notebooks:
        print("no notebook with widgets found")
        return 1
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="folo_edu_browser_"))
    work, home = tmp / "notebooks", tmp / "home"
    work.mkdir()
    for nb in notebooks:
        shutil.copy(nb, work / nb.name)
    port, token = free_port(), secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    server = start_server(work, home, port, token)
    failures = {}
    try:
        print(f"JupyterLab pid {server.pid} on 127.0.0.1:{port}; notebooks: "
              f"{', '.join(nb.name for nb in notebooks)}", flush=True)
        wait_ready(server, base, token, home)
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
            try:
                page = open_lab(ctx, base, token)
                for nb in notebooks:
                    problems = check_notebook(page, base, token, nb.name, tmp)
                    if problems:
                        failures[nb.name] = problems
            finally:
                ctx.close()
    finally:
        stop_server(server)
        if not failures and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    for name, problems in failures.items():
        print(f"FAIL {name}:\n    " + "\n    ".join(problems))
    if failures:
        print(f"server log and screenshots in {tmp}")
    print(f"browser test: {len(notebooks) - len(failures)}/{len(notebooks)} notebooks passed "
          f"in {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
