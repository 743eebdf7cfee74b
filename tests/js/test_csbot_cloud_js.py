"""Runs the JavaScript client's tests (``node --test tests/js/``) as part of the Python suite.

They start a real ``csbot serve`` and FakeWeChat with this interpreter, and drive them with the
shipped ``csbot-cloud.js`` through a stand-in ``wx`` whose ``request`` is real HTTP.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_the_mini_program_client_against_a_real_csbot() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (20+) is needed for the JavaScript client's tests; .ci/run requires it")
    env = {**os.environ, "CSBOT_PYTHON": sys.executable}
    done = subprocess.run([node, "--test", str(HERE)], cwd=HERE.parent.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "# fail 0" in done.stdout
