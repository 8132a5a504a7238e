"""Test-wide environment: DDS stays on loopback in a private domain, MuJoCo renders headless.

Set before any test module imports rclpy or mujoco (conftest is imported first).
"""
import os
import random

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated alias; the range above is authoritative
# A private domain per test run so parallel runs (or other sessions) never see each other's topics.
# Domain ids 0..101 and 215..232 are safe for Fast DDS port arithmetic; stay inside 1..100.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("GATO_TEST_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _low_wakeup_latency():
    """Keep idle CPUs from halting while the suite runs (PM QoS: /dev/cpu_dma_latency = 0 us).

    On a virtual machine an idle vCPU halts, and waking it for a timer or a DDS message takes long enough that the
    20 Hz control-loop tests miss most of their ticks on an otherwise idle 2-core box (measured here: 1-7
    commands in 2 s instead of ~40; with one core busy, or with this request, every tick arrives). Real-time robot
    computers make the same request for their control loops. Best effort: without permission it changes nothing.
    The request lasts while the file stays open, i.e. for this test session only.
    """
    from gato_ros.ros.common import hold_wakeup_latency

    try:
        fd = hold_wakeup_latency(0)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.close(fd)


@pytest.fixture
def ros_context():
    """A private rclpy context for one test (shut down after it)."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)
