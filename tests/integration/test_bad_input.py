"""The whole daemon under malformed input: every bad message rejected and counted, the volume intact.

``holostream serve`` runs as a subprocess on free ports; a simulated scan is streamed once
cleanly and once with every kind of message that breaks PROTOCOL.md inserted between its
frames. Both final volumes, received on the PUB socket, must agree.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from holostream.service.clients.detector import scan_info_of, simulated_scan_data, stream_scan
from holostream.shared.messages import encode_frame

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``holostream serve`` in a subprocess, with a subscriber and a control client."""

    def __init__(self):
        self.ingest, publish, self.control_address = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "holostream.service.cli", "serve", "--ingest", self.ingest,
             "--publish", publish, "--control", self.control_address, "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ctx = zmq.Context.instance()  # shared, never terminated here (live_service.client_context)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)  # the default (-1) could hold a context's term() forever
        self.sub.setsockopt(zmq.SUBSCRIBE, b"volume")
        self.sub.setsockopt(zmq.RCVHWM, 100)
        self.sub.connect(publish)

    def control(self, request: dict, timeout_s: float = 2.0) -> dict | None:
        req = self.ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(self.control_address)
        try:
            req.send_json(request)
            if not req.poll(int(timeout_s * 1000)):
                return None
            return req.recv_json()
        finally:
            req.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            reply = self.control({"cmd": "status"}, timeout_s=1.0)
            if reply and reply.get("ok") and reply["status"]["ingest_pid"]:
                return
        raise TimeoutError("holostream serve did not answer status")

    def final_volume(self, scan_id: str, timeout_s: float = 120.0) -> tuple[dict, np.ndarray]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sub.poll(500):
                continue
            topic, header, payload = self.sub.recv_multipart()
            head = json.loads(header)
            if head["scan_id"] == scan_id and head["final"]:
                return head, np.frombuffer(payload, dtype="<f4").reshape(head["shape"])
        raise TimeoutError(f"no final volume of {scan_id} within {timeout_s} s")

    def status(self) -> dict:
        reply = self.control({"cmd": "status"})
        assert reply and reply["ok"], reply
        return reply["status"]

    def close(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.sub.close(linger=0)
        return err


def malformed_messages(scan_data, scan_id: str) -> dict[int, list[list]]:
    """Every kind of message the contract rejects, keyed by the projection it precedes."""
    info = scan_info_of(scan_data, scan_id, delta_beta=200.0)
    image = scan_data.projections[0]
    good = encode_frame(scan_id, "projection", 0, image, angle_deg=0.0)
    header = json.loads(good[0])
    start = {"type": "scan_start", **info.to_dict()}

    one_distance = {k: v for k, v in start.items() if k not in ("distance_m", "pixel_size_m")}
    plane = {"distance_m": info.distance_m, "pixel_size_m": info.pixel_size_m}

    def frame(**changes):
        return json.dumps({**header, **changes}).encode()

    noise = np.full_like(image, 7)
    return {
        -1: [[b"{not json at all"]],
        1: [[b'["a", "list"]'], [json.dumps({"type": "scan_pause", "scan_id": scan_id}).encode()]],
        2: [[good[0], bytes(good[1])[:-10]],  # payload 10 bytes short
            [frame(dtype="float32"), np.zeros(image.shape, np.float32)]],  # dtype disagrees
        3: [[frame(shape=[image.shape[0], image.shape[1] // 2]), image[:, : image.shape[1] // 2].copy()]],
        4: [[frame(scan_id="nobody_started_this"), image]],  # unknown scan
        5: [encode_frame(scan_id, "projection", 0, noise, angle_deg=0.0)],  # duplicate index
        6: [[json.dumps({**start, "scan_id": "nan_scan", "energy_kev": -17.5}).encode()],  # out of range
            [json.dumps({**start, "scan_id": "huge_scan", "shape": [100000, 100000]}).encode()]],  # absurd
        7: [[frame(index=len(scan_data.projections)), image],  # index beyond the scan
            [frame(kind="bright"), image],
            [good[0]],  # payload missing
            [good[0], good[1], good[1]]],  # one part too many
        8: [[json.dumps({**start, "scan_id": "odd_settings", "reconstruction": {"colour": "blue"}}).encode()],
            [json.dumps({"type": "scan_end", "scan_id": "never_opened"}).encode()]],
        # several distances (PROTOCOL.md "Extensions"): a bad list, frames naming a distance
        # this single-distance scan does not have (a valid list would be taken live now, and
        # would end this scan: tests/integration/test_multidistance_live.py covers it)
        9: [[json.dumps({**one_distance, "scan_id": "md_bad", "distances": [plane]}).encode()],
            [frame(distance_index=1), image]],
        10: [[frame(distance_index=0), image]],
    }


@pytest.fixture(scope="module")
def service():
    svc = Service()
    try:
        svc.wait_ready()
        yield svc
    finally:
        err = svc.close()
        assert "Traceback" not in err, err


def test_malformed_messages_are_rejected_counted_and_harmless(service):
    scan_data = simulated_scan_data(size=32, n_projections=16, n_darks=2, n_flats=2, seed=3)
    stream_scan(service.ingest, scan_data, "clean", delta_beta=200.0)
    clean_header, clean = service.final_volume("clean")
    before = service.status()
    assert before["frames_rejected"] == 0

    bad = malformed_messages(scan_data, "dirty")
    n_bad = sum(len(messages) for messages in bad.values())
    stream_scan(service.ingest, scan_data, "dirty", delta_beta=200.0, extra=bad)
    dirty_header, dirty = service.final_volume("dirty")

    deadline = time.monotonic() + 10
    status = service.status()
    while status["frames_rejected"] < n_bad and time.monotonic() < deadline:
        status = service.status()
    assert status["frames_rejected"] == n_bad, status["ingest"]["rejected_by_reason"]
    reasons = status["ingest"]["rejected_by_reason"]
    for code in ("bad_json", "unknown_type", "payload_size", "format", "unknown_scan", "duplicate",
                 "out_of_range", "too_large", "index_range", "bad_field", "parts", "settings",
                 "bad_distances", "unknown_distance"):
        assert reasons.get(code, 0) >= 1, (code, reasons)
    assert status["frames_dropped"] == 0
    assert dirty_header["n_projections_used"] == clean_header["n_projections_used"] == 16
    assert np.abs(clean).max() > 0
    np.testing.assert_allclose(dirty, clean, rtol=1e-5, atol=1e-6 * np.abs(clean).max())
