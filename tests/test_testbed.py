"""The test bed itself: the namespace script fails loudly in CI, and no livekit-server outlives a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts.livekit_server import binary_path, sweep_orphans
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]


def test_netns_script_refuses_the_host_namespace_in_ci() -> None:
    # Before: a namespace that could not be set up was silently skipped, and the suite ran in the host
    # namespace (where libwebrtc finds no usable interface, or a real one).
    env = dict(os.environ, CI="true", LK_BRIDGE_NETNS_NAME="bad/name")
    env.pop("LK_BRIDGE_NETNS", None)
    result = subprocess.run([str(ROOT / "scripts/netns.sh"), "exec", "true"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 3, result.stderr
    assert "refusing to run in the host namespace in CI" in result.stderr
    # Outside CI it still runs, with a warning; an explicit LK_BRIDGE_NETNS=0 runs quietly.
    env.pop("CI")
    result = subprocess.run([str(ROOT / "scripts/netns.sh"), "exec", "true"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0 and "warning" in result.stderr
    quiet = subprocess.run([str(ROOT / "scripts/netns.sh"), "exec", "true"], capture_output=True, text=True,
                           env=dict(env, CI="true", LK_BRIDGE_NETNS="0"), timeout=30, check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""


def _running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except OSError:
        return False


def test_a_server_left_by_a_killed_run_is_swept() -> None:
    if not binary_path().is_file():
        need("the livekit-server binary is not built (make livekit-server)")
    starter = subprocess.Popen(
        [sys.executable, "-c", "import time; from scripts.livekit_server import LiveKitServer\n"
         "s = LiveKitServer().start(); print(s.pid, flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    server = int(starter.stdout.readline())
    starter.send_signal(signal.SIGKILL)  # the test run is killed: nothing gets to stop the server
    starter.wait()
    try:
        time.sleep(0.5)
        assert _running(server), "expected the orphan to survive its starter (new session)"
        assert server in sweep_orphans()
        deadline = time.monotonic() + 10
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(server)
    finally:
        if _running(server):
            os.kill(server, signal.SIGKILL)
