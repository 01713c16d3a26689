"""Log lines carry a timestamp unless journald (JOURNAL_STREAM) stamps them itself."""

import os
import re
import subprocess
import sys


def log_line(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env.update(env_extra)
    # the real entry point, with a command whose run() logs one warning
    code = ("import logging, sys; from holostream.service import cli; "
            "sys.argv = ['holostream', 'config', '--defaults']; "
            "import holostream.service.commands.config as c; "
            "c.run = lambda args: logging.getLogger('holostream.test').warning('hello') or 0; "
            "sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_timestamps_off_journald_and_none_under_it():
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING holostream.test: hello$", log_line({}))
    assert log_line({"JOURNAL_STREAM": "8:12345"}) == "WARNING holostream.test: hello"
