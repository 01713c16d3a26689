"""`holostream view` in a real headless Chromium, on a real daemon fed a simulated scan.

The page must load, show the slices of the live scan change as projections arrive, draw
the final volume's slices as published (checked pixel by pixel against the volume a plain
subscriber receives), serve the slice the operator picks, and serve a second page at the
same time. A screenshot of the page at the scan's end is kept (path printed). The operator
re-centres the scan from the page (typed and clicked in the browser): the viewer forwards it to
the daemon's control socket, and the next volumes are reconstructed about the new axis.

Chromium and its driver come from the system (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them); selenium is told their paths, so it downloads
nothing. Without them the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from holostream.service.clients.detector import stream_scan

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("HOLOSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("HOLOSTREAM_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Where the screenshot is kept (CI collects tests/artifacts/).
ARTIFACTS = Path(os.environ.get("HOLOSTREAM_TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven through chromedriver, fresh profile; quit after the module."""
    pytest.importorskip("aiohttp", reason="the viewer needs aiohttp (pip install holostream[view])")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not found: install {package} (apt-get install -y chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="holostream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Viewer:
    """`holostream view` in a subprocess, serving on a free port."""

    def __init__(self, tmp_path: Path, publish: str, port: int, control: str):
        self.url = f"http://127.0.0.1:{port}/"
        self.log = tmp_path / "view.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "holostream.service.cli", "view", "--publish", publish,
             "--control", control, "--listen", f"127.0.0.1:{port}"], stdout=self._log, stderr=subprocess.STDOUT)

    def state(self) -> dict | None:
        """``/api/state``, or None while the server does not answer."""
        if self.proc.poll() is not None:
            raise AssertionError(f"viewer exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(self.url + "api/state", timeout=2) as reply:
                return json.loads(reply.read())
        except (urllib.error.URLError, ConnectionError):
            return None

    def close(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


@pytest.fixture
def daemon(shared_daemon):
    """The session's shared daemon (conftest.shared_daemon) and one viewer of it for this
    module's tests: each streams its own scan; the page is loaded afresh and waits for it."""
    return shared_daemon


@pytest.fixture(scope="module")
def viewer(tmp_path_factory, serve):
    """A viewer subscribed to the shared daemon, once it has received the daemon's status."""
    daemon = serve.shared_daemon_of(tmp_path_factory)
    v = Viewer(tmp_path_factory.mktemp("view"), daemon.publish, serve.free_port(), daemon.control)
    try:
        serve.wait_for(lambda: (v.state() or {}).get("status"), 30, "the viewer to receive a status")
        yield v
    finally:
        code = v.close()
        assert code == 0, v.log.read_text()


def page(driver, expression: str):
    """The value of a JavaScript expression in the page."""
    return driver.execute_script(f"return {expression};")


def canvas_rgb(driver, canvas_id: str) -> np.ndarray:
    """The pixels of a canvas as ``(rows, cols, 3)`` uint8."""
    width, height, data = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        canvas_id)
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def gray_levels(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """What the page draws for ``image`` on the gray map with scale ``(low, high)``."""
    return np.clip(np.round((image.astype(np.float64) - low) * (255.0 / (high - low))), 0, 255)


def second_page(url: str, scan_id: str, done: threading.Event, seen: list) -> None:
    """Another browser tab's worth of WebSocket: read until the final image of ``scan_id``."""
    import aiohttp

    from holostream.service.view.wire import unpack

    async def read():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url.replace("http", "ws") + "ws") as ws:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        meta, _ = unpack(message.data)
                        seen.append(meta["header"])
                        if meta["header"]["scan_id"] == scan_id and meta["header"]["final"]:
                            return
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        seen.append(json.loads(message.data)["type"])
    try:
        asyncio.run(asyncio.wait_for(read(), 120))
    finally:
        done.set()


def test_live_scan_in_the_browser(browser, viewer, daemon, small_scan_data, serve, subscribe):
    driver = browser
    driver.get(viewer.url)
    serve.wait_for(lambda: page(driver, "window.holostreamView && window.holostreamView.connected"), 20,
                   "the page to open its WebSocket")
    serve.wait_for(lambda: page(driver, "window.holostreamView.status !== null"), 20, "the page to show a status")
    serve.wait_for(lambda: driver.find_element("id", "connection").text == "live", 5, "the page to say 'live'")

    scan_id = "view_live_0001"
    subscriber = subscribe(daemon.publish)
    subscriber.wait_connected()
    other_done, other_seen = threading.Event(), []
    other = threading.Thread(target=second_page, args=(viewer.url, scan_id, other_done, other_seen), daemon=True)
    other.start()
    serve.wait_for(lambda: viewer.state()["browsers"] == 2, 20, "the second page to connect")

    errors = []

    def send():
        try:  # ~3 s of projections: several live volumes at the daemon's 0.5 s interval
            stream_scan(daemon.ingest, small_scan_data, scan_id, fps=30)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    # follow the page while the scan streams: every distinct picture it draws
    pictures = {}

    def final_shown():
        if page(driver, "window.holostreamView.image === null"):
            return False
        header = page(driver, "window.holostreamView.image.meta.header")
        if header["scan_id"] == scan_id and header["seq"] not in pictures:
            pictures[header["seq"]] = (header["n_projections_used"], canvas_rgb(driver, "cut-z"))
        return header["scan_id"] == scan_id and header["final"]
    serve.wait_for(final_shown, 120, "the page to show the final volume", interval_s=0.1)
    sender.join(30)
    assert not errors, errors
    volumes = subscriber.volumes_until_final(scan_id, 60)
    subscriber.close()
    final_header, final = volumes[-1]

    # the slices changed as the scan progressed
    live = [pictures[s] for s in sorted(pictures)]
    assert len(live) >= 2, f"only {len(live)} picture(s) of the scan drawn"
    used = [n for n, _ in live]
    assert used == sorted(used) and used[0] < used[-1] == final_header["n_projections_used"], used
    assert not np.array_equal(live[0][1], live[-1][1]), "the first and the final z slice look the same"

    # the page shows the scan's numbers
    assert driver.find_element("id", "scan-id").text == scan_id
    # (from the status while the scan is open, from the volume once the daemon is idle)
    assert driver.find_element("id", "projections").text.replace(" ", "") == \
        f"{final_header['n_projections_used']}/{final_header['n_projections_expected']}"
    assert float(driver.find_element("id", "cor-px").text) == pytest.approx(final_header["cor_px"], abs=1e-3)
    parameters = driver.find_element("id", "parameters").text
    assert f"filter {final_header['filter']}" in parameters and "delta_beta 200" in parameters

    # the final slices, drawn on the gray map with a scale we set, are the published volume's
    low, high = float(np.percentile(final, 2)), float(np.percentile(final, 98))
    from selenium.webdriver.support.ui import Select
    Select(driver.find_element("id", "colormap")).select_by_value("gray")
    for field, value in (("scale-min", low), ("scale-max", high)):
        driver.execute_script("document.getElementById(arguments[0]).value = arguments[1];", field, repr(value))
    driver.find_element("id", "scale-apply").click()
    nz, ny, nx = final.shape
    for canvas, expected in (("cut-z", final[nz // 2]), ("cut-y", final[:, ny // 2]), ("cut-x", final[:, :, nx // 2])):
        drawn = canvas_rgb(driver, canvas)
        assert drawn.shape[:2] == expected.shape
        assert np.abs(drawn[..., 0] - gray_levels(expected, low, high)).max() <= 1, canvas

    # a slice of the operator's choice, cut from the whole volume by the viewer
    Select(driver.find_element("id", "chosen-axis")).select_by_value("y")
    driver.execute_script("const s = document.getElementById('chosen-index'); s.value = 5;"
                          "s.dispatchEvent(new Event('input'));")
    serve.wait_for(lambda: page(driver, "(window.holostreamView.image.arrays.chosen || {}).index") == 5, 20,
                   "the page to receive the chosen slice")
    assert np.abs(canvas_rgb(driver, "cut-chosen")[..., 0] - gray_levels(final[:, 5], low, high)).max() <= 1

    # the screenshot shows the page as an operator first sees it: the scan's scale, viridis
    driver.find_element("id", "scale-scan").click()
    Select(driver.find_element("id", "colormap")).select_by_value("viridis")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "view_final.png"
    assert driver.save_screenshot(str(screenshot))
    print(f"screenshot of the viewer at the scan's end: {screenshot}")

    # the second page got the same final volume at the same time
    assert other_done.wait(60)
    assert "hello" in other_seen and "status" in other_seen
    assert any(isinstance(h, dict) and h["scan_id"] == scan_id and h["final"] for h in other_seen)


def test_operator_recentres_from_the_page(browser, viewer, daemon, small_scan_data, serve, subscribe):
    from holostream.service.offline import reconstruct_scan
    from holostream.shared.settings import ReconstructionSettings
    from holostream.workers.backend import get_backend

    driver = browser
    driver.get(viewer.url)
    serve.wait_for(lambda: page(driver, "window.holostreamView && window.holostreamView.hello !== null"), 20,
                   "the page to be greeted by the viewer")
    serve.wait_for(lambda: driver.find_element("id", "retune-apply").is_enabled(), 5,
                   "the re-centre button to be enabled (viewer with --control)")
    scan_id, new_cor_px = "view_retune_0001", 4.5
    subscriber = subscribe(daemon.publish)
    subscriber.wait_connected()
    errors = []

    def send():
        try:  # ~9 s of projections: time to see a live volume, then re-centre mid-scan
            stream_scan(daemon.ingest, small_scan_data, scan_id, fps=10)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    serve.wait_for(lambda: (page(driver, "window.holostreamView.image && "
                                 "window.holostreamView.image.meta.header.scan_id") == scan_id), 60,
                   "the page to show a live volume of the scan", interval_s=0.1)
    before = page(driver, "window.holostreamView.image.meta.header")
    assert not before["final"] and before["cor_source"] != "operator", before

    field = driver.find_element("id", "retune-cor")
    field.clear()
    field.send_keys(str(new_cor_px))
    driver.find_element("id", "retune-apply").click()
    serve.wait_for(lambda: page(driver, "window.holostreamView.retune !== null"), 20, "the daemon's reply on the page")
    reply = page(driver, "window.holostreamView.retune.reply")
    assert reply["ok"] and reply["cor_px"] == new_cor_px and reply["scan_id"] == scan_id, reply
    assert f"cor_px {new_cor_px}" in driver.find_element("id", "retune-reply").text

    # the page shows a volume about the operator's axis, and says so
    serve.wait_for(lambda: page(driver, "window.holostreamView.image.meta.header.cor_source") == "operator", 30,
                   "the page to show a re-centred volume", interval_s=0.1)
    assert driver.find_element("id", "cor-source").text == "operator"
    assert float(driver.find_element("id", "cor-px").text) == pytest.approx(new_cor_px)

    volumes = subscriber.volumes_until_final(scan_id, 60)
    subscriber.close()
    sender.join(30)
    assert not errors, errors
    sources = [h["cor_source"] for h, _ in volumes]
    first = sources.index("operator")
    assert first > 0 and set(sources[first:]) == {"operator"}, sources
    assert all(h["cor_px"] == new_cor_px for h, _ in volumes[first:])
    assert all(h["cor_px"] == before["cor_px"] for h, _ in volumes[:first])
    (_, previous), (_, recentred) = volumes[first - 1], volumes[first]
    assert not np.allclose(previous, recentred), "the re-centred volume is the previous one"

    # the final volume is the offline reconstruction about the operator's axis, not the old one
    final = volumes[-1][1]
    cpu = get_backend("cpu", threads=1)
    settings = ReconstructionSettings()
    new, _ = reconstruct_scan(small_scan_data, settings, serve.DELTA_BETA, new_cor_px, cpu)
    old, _ = reconstruct_scan(small_scan_data, settings, serve.DELTA_BETA, before["cor_px"], cpu)
    corr_new = np.corrcoef(final.ravel(), new.ravel())[0, 1]
    corr_old = np.corrcoef(final.ravel(), old.ravel())[0, 1]
    print(f"re-centred final vs offline about {new_cor_px}: corr {corr_new:.5f}; "
          f"about {before['cor_px']}: {corr_old:.4f}")
    assert corr_new >= 0.999 and corr_old < corr_new

    # the completed scan re-filtered from the page: its final volume again, made with hann
    from selenium.webdriver.support.ui import Select

    final_header = volumes[-1][0]
    Select(driver.find_element("id", "retune-filter")).select_by_value("hann")
    driver.find_element("id", "refilter-apply").click()
    serve.wait_for(lambda: page(driver, "window.holostreamView.image.meta.header.filter") == "hann", 30,
                   "the page to show the re-filtered final volume", interval_s=0.1)
    header = page(driver, "window.holostreamView.image.meta.header")
    assert header["final"] and header["seq"] == final_header["seq"] + 1 and header["cor_px"] == new_cor_px
    assert header["retuned"] == {"filter": {"from": "ram-lak", "to": "hann"}}
    assert f"filter hann for {scan_id}" in driver.find_element("id", "retune-reply").text
    assert '"to":"hann"' in driver.find_element("id", "parameters").text.replace(" ", "")

    # δ/β from the page: this daemon (pool mode) kept the transmissions, so the final volume is
    # re-phased with δ/β 400 (and still filtered with hann)
    driver.find_element("id", "retune-delta-beta").send_keys("400")
    driver.find_element("id", "rephase-apply").click()
    serve.wait_for(lambda: page(driver, "window.holostreamView.image.meta.header.delta_beta") == 400, 60,
                   "the page to show the re-phased final volume", interval_s=0.1)
    header = page(driver, "window.holostreamView.image.meta.header")
    assert header["final"] and header["retuned"] == {"filter": {"from": "ram-lak", "to": "hann"},
                                                     "delta_beta": {"from": serve.DELTA_BETA, "to": 400}}
    assert f"delta_beta 400 for {scan_id}" in driver.find_element("id", "retune-reply").text

    # the viewer passes on the re-tunable keys only: anything else is refused before the daemon
    refused = urllib.request.Request(viewer.url + "api/set", data=json.dumps({"binning": 1}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(refused, timeout=5)
    assert caught.value.code == 400 and "binning" in json.loads(caught.value.read())["error"]
