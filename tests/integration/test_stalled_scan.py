"""A detector that stops mid-scan: after the configured silence the scan ends with a final
volume of what arrived, marked incomplete with the reason (issue 9, finding 4)."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from holostream.service.clients.detector import scan_info_of
from holostream.shared.messages import DTYPES, encode_frame, encode_scan_start

pytestmark = pytest.mark.integration


def test_stalled_scan_ends_incomplete_after_the_silence(tmp_path, serve, small_scan_data):
    data = small_scan_data
    daemon = serve.Daemon(tmp_path, ingest_keys={"stall_timeout_s": 3.0}, output_dir=tmp_path / "volumes")
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    try:
        daemon.wait_ready(60)
        sub = serve.Subscriber(daemon.publish)
        try:
            sub.wait_connected()
            push.connect(daemon.ingest)
            info = scan_info_of(data, "stops", serve.DELTA_BETA)
            dtype = DTYPES[info.dtype]
            push.send_multipart(encode_scan_start(info))
            for kind, stack in (("dark", data.darks), ("flat", data.flats)):
                for i, image in enumerate(stack):
                    push.send_multipart(encode_frame("stops", kind, i, np.asarray(image, dtype)))
            for i in range(40):  # then the detector goes quiet: no more frames, no scan_end
                push.send_multipart(encode_frame("stops", "projection", i,
                                                 np.asarray(data.projections[i], dtype),
                                                 angle_deg=float(data.angles_deg[i])))
            header, _ = sub.volumes_until_final("stops", timeout_s=120)[-1]
        finally:
            sub.close()
        assert header["incomplete"] is True and header["n_projections_used"] == 40
        assert "stalled: nothing received for 3 s, 40 of 90 projections arrived" == header["incomplete_reason"]
        status = serve.wait_for(lambda: (s := daemon.status())["scans_incomplete"] == 1 and s, 30,
                                "the stall in status")
        assert "stalled" in status["last_error"] and status["state"] == "idle"
        assert serve.shm(daemon.proc.pid) == [] or serve.wait_for(lambda: serve.shm(daemon.proc.pid) == [], 10,
                                                                  "its shared memory to go")
    finally:
        push.close()
        context.destroy(linger=0)
        daemon.close()
