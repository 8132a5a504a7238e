"""`run_node` on real node processes: SIGUSR1 prints every thread's stack and the node runs on; a clean-up that hangs
after SIGINT prints the stacks (naming the hanging call) and exits with code 1 within SHUTDOWN_GRACE_S instead of
waiting for SIGKILL; a normal node exits 0 on SIGINT; a node that publishes frames gets the Fast DDS profile."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")

from gato_ros.ros.common import SHUTDOWN_GRACE_S  # noqa: E402
from gato_ros.ros.graph import share_path  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]

NODE = textwrap.dedent("""
    import os, sys, threading
    import rclpy, rclpy.node
    from gato_ros.ros.common import run_node

    class Node(rclpy.node.Node):
        def __init__(self):
            super().__init__("shutdown_probe")
            profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
            self.ticks = 0

            def tick():
                print("spinning", profile, flush=True)
                self.ticks += 1
                if self.ticks == 3 and sys.argv[1] == "error_after_shutdown":
                    rclpy.shutdown()  # what Ctrl-C's handler does, then the error an executor's next wait raises
                    raise RuntimeError("failed to initialize wait set: the given context is not valid")
                if self.ticks == 3 and sys.argv[1] == "error":
                    raise RuntimeError("a bug in a callback")
            self.create_timer(0.05, tick)

        def destroy_node(self):
            if sys.argv[1] == "hang":
                threading.Event().wait()  # a clean-up that never returns
            super().destroy_node()

    sys.exit(run_node(Node, "shutdown_probe", threads=int(sys.argv[2]), large_frames=sys.argv[3] == "1"))
""")


def start(mode: str, threads: int, large_frames: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", NODE, mode, str(threads), "1" if large_frames else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the first timer callback ran: the node is spinning
    why = proc.stderr.read() if proc.poll() is not None else ""
    assert line.split()[:1] == ["spinning"], f"node did not start: {line!r}\n{why}"
    # a node that publishes frames gets Fast DDS's large-frame profile before rclpy.init (unless one was set)
    users = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    expected = users or (str(share_path("config/fastdds.xml")) if large_frames else None)
    assert line.split()[1:] == ([expected] if expected else []), line
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"node still running {timeout} s after SIGINT:\n{err}")
    return proc.returncode, err


@pytest.mark.parametrize("threads, large_frames", [(1, True), (3, False)])
def test_sigint_stops_a_node_cleanly(threads, large_frames):
    proc = start("normal", threads, large_frames)
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc, timeout=SHUTDOWN_GRACE_S + 10)
    assert rc == 0, err
    assert "shutdown_probe: shutting down" in err
    assert "Traceback" not in err and "hread 0x" not in err, err


def test_sigusr1_prints_the_stacks_and_the_node_runs_on():
    proc = start("normal", 3)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    assert proc.poll() is None, "SIGUSR1 must not stop the node"
    assert proc.stdout.readline().split()[:1] == ["spinning"]  # still ticking
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc, timeout=SHUTDOWN_GRACE_S + 10)
    assert rc == 0
    assert err.count("hread 0x") >= 2, err  # "Current thread 0x..." (main) and "Thread 0x..." (pool workers)
    assert "in spin" in err, err


def test_a_hanging_cleanup_dumps_the_stacks_and_exits_1():
    proc = start("hang", 3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc, timeout=SHUTDOWN_GRACE_S + 20)
    elapsed = time.monotonic() - t0
    assert rc == 1, err
    assert elapsed >= SHUTDOWN_GRACE_S - 0.5  # it waited for the clean-up first
    assert "Timeout (0:00:" in err and "in destroy_node" in err, err  # the dump names the hanging call


@pytest.mark.parametrize("threads", [1, 3])
def test_an_error_from_spin_after_shutdown_is_a_stop_and_one_before_is_not(threads):
    """Ctrl-C racing the executor's next wait surfaces as an error from spin once the context is shut down: the
    node then stops as for SIGINT (exit 0); an error while the context is up still fails the node."""
    rc, err = finish(start("error_after_shutdown", threads), timeout=SHUTDOWN_GRACE_S + 10)
    assert rc == 0, err
    assert "shutdown_probe: shutting down" in err and "Traceback" not in err, err
    rc, err = finish(start("error", threads), timeout=SHUTDOWN_GRACE_S + 10)
    assert rc != 0 and "a bug in a callback" in err, err
