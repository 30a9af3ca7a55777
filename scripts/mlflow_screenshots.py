"""Screenshots of a sweep in the MLflow UI, as a new user sees it, for the docs (docs/images/mlflow-*.png).

    python scripts/mlflow_screenshots.py results/quickstart --group-by subspace --out docs/images

Starts `basin ui` and a headless Chromium (both on 127.0.0.1, each in its own process group, both ended at
the end), opens the URL `basin ui` prints, closes MLflow's assistant panel (it opens by itself on a first
visit) and captures: the seed groups' table (mean ± std, best first), the chart view of the same groups (the
headline metrics as bars), the trials grouped by one axis, a trial's metric charts and profiles, the sweep's own
run and its one-file report (report.html) in MLflow's artifact viewer.
Chromium is driven over its DevTools protocol with aiohttp (installed with ray[default]).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_json(url: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.load(r)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Browser:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: Any):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.n:
                return msg.get("result", {})

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return r.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> None:
        """Until `expression` is true in the page (the UI renders asynchronously)."""
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            await asyncio.sleep(0.3)

    async def shot(self, url: str, ready: str, out: Path, before: str = "",
                   wheel: tuple[int, int, int] | None = None) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(ready)
        await self.js(CLOSE_ASSISTANT)
        if before:
            await self.js(before)
        if wheel:  # (x, y, pixels): scroll what is there, e.g. a frame the page's scripts cannot reach
            await asyncio.sleep(3)
            await self.call("Input.dispatchMouseEvent", type="mouseWheel", x=wheel[0], y=wheel[1], deltaX=0,
                            deltaY=wheel[2])
        await asyncio.sleep(2)  # charts draw after the data arrives
        data = await self.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(data["data"]))
        from PIL import Image  # 256 colours are plenty for a UI and halve the file

        Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)
        print(f"wrote {out}")


def text_present(text: str) -> str:
    return f"document.body && document.body.innerText.includes({json.dumps(text)})"


def run_ids(folder: str) -> tuple[str, str]:
    """(the sweep's parent run, a trial with the most metrics: a line's if there is one)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.ui import tracking_uri

    name, uri = tracking_uri(folder)
    client = MlflowClient(tracking_uri=uri)
    eid = client.get_experiment_by_name(name).experiment_id
    parent = client.search_runs([eid], "tags.`basin.role` = 'sweep'")[0].info.run_id
    trials = client.search_runs([eid], "tags.`basin.role` = 'trial'", max_results=1000)
    trial = max(trials, key=lambda r: (r.data.params.get("shape") == "line", len(r.data.metrics)))
    return parent, trial.info.run_id


async def capture(url: str, folder: str, group_by: str | None, out: Path, width: int, height: int,
                  chromium: str, report_scroll: int = 6000, groups_only: bool = False) -> None:
    import aiohttp

    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
                                 f"--remote-debugging-port={port}", f"--window-size={width},{height}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            tabs = wait_json(f"http://127.0.0.1:{port}/json", 30)
            ws_url = next(t["webSocketDebuggerUrl"] for t in tabs if t["type"] == "page")
            async with aiohttp.ClientSession() as s, s.ws_connect(ws_url, max_msg_size=0) as ws:
                b = Browser(ws)
                await b.call("Page.enable")
                rows = "document.querySelectorAll('.ag-row').length > 0"
                await b.shot(url, rows, out / "mlflow-runs.png")
                await b.shot(url + "&compareRunsMode=CHART", text_present("main/test_accuracy"),
                             out / "mlflow-charts.png")
                if groups_only:  # e.g. a synthetic results folder: no epochs, no report
                    return
                if group_by:
                    expand = "Array.from(document.querySelectorAll('.ag-cell-value')).find(c => c.innerText" \
                             ".includes('Group:'))?.querySelector('span[role=button]')?.click()"  # the first group
                    by_axis = url.replace("viewStateShareKey=basin&", f"viewStateShareKey=basin-by-{group_by}&")
                    await b.shot(by_axis, text_present("Group:"), out / "mlflow-runs-by-axis.png", before=expand)
                parent, trial = run_ids(folder)
                runs = url.split("?")[0]
                await b.shot(f"{runs}/{trial}/model-metrics?workflowType=machine_learning", text_present("epoch"),
                             out / "mlflow-run-charts.png")
                landscape = "Array.from(document.querySelectorAll('*')).find(e => e.childElementCount == 0 && " \
                            "e.textContent.trim().startsWith('landscape/'))?.scrollIntoView()"
                await b.shot(f"{runs}/{trial}/model-metrics?workflowType=machine_learning", text_present("landscape/"),
                             out / "mlflow-run-profiles.png", before=landscape)
                await b.shot(f"{runs}/{parent}?workflowType=machine_learning", text_present("sweep/groups"),
                             out / "mlflow-sweep-run.png")
                # the page is in a sandboxed frame the page's scripts cannot reach: the mouse wheel scrolls it
                # (--report-scroll pixels) to a figure
                await b.shot(f"{runs}/{parent}/artifacts/report.html?workflowType=machine_learning",
                             "!!document.querySelector('iframe')", out / "mlflow-report.png",
                             wheel=(1100, 500, report_scroll))
        finally:
            end_group(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a sweep's results folder")
    p.add_argument("--group-by", help="also the runs table grouped by this axis, its first group opened")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"))
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--chromium", default="chromium")
    p.add_argument("--report-scroll", type=int, default=6000, help="pixels the report.html shot scrolls down")
    p.add_argument("--groups-only", action="store_true", help="only the seed groups' table and chart view")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "orchestrator.cli", "ui", args.sweep, "--port", str(free_port()), "--no-browser"]
    ui = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = ""
        for line in ui.stdout:
            if line.startswith("MLflow UI for"):
                url = line.split()[4]
                break
        if not url:
            print("basin ui did not start", file=sys.stderr)
            return 1
        asyncio.run(capture(url, args.sweep, args.group_by, out, args.width, args.height, args.chromium,
                            args.report_scroll, args.groups_only))
    finally:
        end_group(ui)
    return 0


if __name__ == "__main__":
    sys.exit(main())
