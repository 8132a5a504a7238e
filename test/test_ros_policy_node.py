"""The policy node over real DDS on loopback, with the real RuntimePolicy on a real (untrained, tiny) bundle.

The node runs in this process on its own ThreadedExecutor thread, exactly as `gato_policy_node` runs it; a
harness node plays camera and joint-state streams and records what comes out. Every test bounds its waits.
"""
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")
import rclpy  # noqa: E402

from ros_support import HOME, JOINTS, Running, assert_safe_sequence, rgb_image, tiny_bundle  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]
RATE = 20.0
PERIOD = 1.0 / RATE
STEP = np.array([0.1] * 6 + [0.01])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture
def running(ros_context, bundle):
    made = []

    def make(**params):
        r = Running(ros_context, bundle, rate=RATE, **params)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_parameters_mirror_the_config_dataclass(running):
    """Every config field is a ROS parameter with the same default (and a description), nothing else is."""
    from dataclasses import fields

    from gato_ros.ros.policy_node import PolicyNodeConfig

    r = running()
    node = r.node
    defaults = PolicyNodeConfig()
    overridden = {"model_path", "control_rate_hz", "execution_provider"}
    for f in fields(PolicyNodeConfig):
        assert node.has_parameter(f.name), f.name
        if f.name == "joint_names":  # an empty string array cannot be declared with a value: it stays unset
            assert node.config.joint_names == [] and node.describe_parameter(f.name).type == 9  # STRING_ARRAY
        elif f.name not in overridden:
            value = node.get_parameter(f.name).value
            assert (list(value) if isinstance(value, (list, tuple)) else value) == getattr(defaults, f.name), f.name
        assert node.describe_parameter(f.name).description, f"{f.name} has no description"
    assert node.config.enable_on_start is False and node.config.sensor_timeout_s == 0.25
    assert node.joint_names == JOINTS


def test_commands_at_rate_with_bgr8_640x480_and_shuffled_extra_joints(running):
    r = running(enable_on_start=True, instruction="reach the red ball")
    h = r.harness
    h.image_msg = rgb_image(480, 640, "bgr8")
    h.joint_names = list(reversed(JOINTS))  # shuffled order...
    h.joint_extra = {"gripper_right_joint": 0.02, "conveyor_joint": 3.0}  # ...and joints the model does not use
    h.start_streams(camera_hz=30.0, joints_hz=50.0)
    assert h.wait_for(lambda: len(h.commands) >= 5, timeout=20), f"no commands; diagnostics {h.last_diagnostics()}"
    t0 = time.monotonic()
    time.sleep(2.0)
    window = h.commands_since(t0)
    # 40 ticks expected in 2 s at 20 Hz: never faster than the rate, one period apart (a starved CI box may drop
    # ticks, which shows as fewer commands, not as a different spacing)
    assert 10 <= len(window) <= 42, f"{len(window)} commands in 2 s at {RATE} Hz; {h.last_diagnostics()}"
    intervals = np.diff([t for t, _ in window])
    assert 0.7 * PERIOD < np.median(intervals) < 1.6 * PERIOD
    cmds = [c for _, c in h.commands]
    assert all(c.shape == (7,) for c in cmds)
    # the first command is within one step of the measured (home) position, matched by name despite the shuffle
    assert np.all(np.abs(cmds[0] - HOME) <= STEP + 1e-9)
    assert_safe_sequence(cmds, STEP)
    assert h.wait_for(lambda: h.last_diagnostics().get("state") == "running", timeout=5)
    d = h.last_diagnostics()
    assert d["provider"] == "CPUExecutionProvider" and d["precision"] == "fp32" and float(d["tick_ms_p50"]) > 0
    assert float(d["achieved_rate_hz"]) > 0.5 * RATE


def test_camera_stop_holds_within_two_periods_then_resumes(running):
    timeout = 2 * PERIOD  # stale after two control periods
    r = running(enable_on_start=True, instruction="reach the red ball", sensor_timeout_s=timeout)
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams()
    assert h.wait_for(lambda: len(h.commands) >= 10, timeout=20)
    h.image_msg = None  # camera stops
    stopped = time.monotonic()
    time.sleep(1.0)
    after = [t for t, _ in h.commands_since(h.last_image_time)]
    # ticks after the last image that may still command: those within the timeout, plus one in flight
    assert len(after) <= int(timeout / PERIOD) + 1, f"{len(after)} commands after the camera stopped"
    quiet = h.commands_since(stopped + 0.5)
    assert quiet == [], "the node kept commanding with a stale image"
    assert h.wait_for(lambda: "image on /camera/image_raw is" in h.last_diagnostics().get("hold_reason", ""), 3)
    assert h.last_diagnostics()["_level"] == 1  # WARN
    assert "fastdds.xml" not in h.last_diagnostics()["hold_reason"]  # 12 kB frames: no transport hint
    h.image_msg = rgb_image(64, 64, seed=1)  # camera back
    resumed = time.monotonic()
    assert h.wait_for(lambda: len(h.commands_since(resumed)) >= 5, timeout=10), "did not resume"
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_stale_frames_over_512_kb_name_the_fast_dds_profile(running):
    """640x480 rgb8 (921,600 B) frames that stop coming: the hold reason points at config/fastdds.xml, since Fast
    DDS's default transports lose nearly every such frame (test_dds_profile) and that looks like a stopped camera."""
    r = running(enable_on_start=True, instruction="reach the red ball")
    h = r.harness
    h.image_msg = rgb_image(480, 640)
    h.start_streams()
    assert h.wait_for(lambda: len(h.commands) >= 3, timeout=20), h.last_diagnostics()
    h.image_msg = None  # no more frames
    assert h.wait_for(lambda: "config/fastdds.xml" in h.last_diagnostics().get("hold_reason", ""), timeout=5), (
        h.last_diagnostics())
    assert "image on /camera/image_raw is" in h.last_diagnostics()["hold_reason"]


def test_enable_false_stops_motion_and_estop_latches(running):
    r = running(instruction="reach the red ball")  # enable_on_start defaults to false
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams()
    time.sleep(1.0)
    assert h.commands == [], "a node that starts disabled must not command"
    assert h.wait_for(lambda: h.last_diagnostics().get("state") == "disabled", timeout=5)
    assert h.enable(True).success
    assert h.wait_for(lambda: len(h.commands) >= 5, timeout=10)
    res = h.enable(False)
    assert res.success
    off = time.monotonic()
    time.sleep(0.6)
    assert h.commands_since(off) == [], "commands after ~/enable false returned"
    # e-stop: latches through a re-enable until explicitly reset
    assert h.enable(True).success
    assert h.wait_for(lambda: len(h.commands_since(time.monotonic() - 0.2)) >= 2, timeout=10)
    h.trigger(h.estop_client)
    stopped = time.monotonic()
    refused = h.enable(True)
    assert not refused.success and "e-stop" in refused.message
    time.sleep(0.5)
    assert h.commands_since(stopped) == []
    assert h.wait_for(lambda: h.last_diagnostics().get("state") == "estop", timeout=5)
    assert h.last_diagnostics()["_level"] == 2  # ERROR
    h.trigger(h.reset_estop_client)
    time.sleep(0.3)
    assert h.commands_since(stopped) == [], "resetting the e-stop alone must not restart motion"
    assert h.enable(True).success
    assert h.wait_for(lambda: len(h.commands_since(stopped)) >= 3, timeout=10)
    # the hardware-button topic latches too
    from std_msgs.msg import Bool

    assert h.wait_for(lambda: h.estop_pub.get_subscription_count() >= 1, timeout=5)
    h.estop_pub.publish(Bool(data=True))
    assert h.wait_for(lambda: h.last_diagnostics().get("estop") == "true", timeout=5)
    assert_safe_sequence([c for _, c in h.commands if c is not None][-3:], STEP)


def test_image_trigger_ticks_per_image_and_still_detects_a_stopped_camera(running):
    r = running(enable_on_start=True, instruction="reach the red ball", trigger="image", sensor_timeout_s=2 * PERIOD)
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams(camera_hz=RATE, joints_hz=50.0)
    assert h.wait_for(lambda: len(h.commands) >= 5, timeout=20)
    t0 = time.monotonic()
    time.sleep(2.0)
    cmds = h.commands_since(t0)
    # one command per image at most (the 0.8-period rate limit), most images answered
    assert 10 <= len(cmds) <= 2.0 / (0.8 * PERIOD) + 1
    h.image_msg = None  # the watchdog timer still sees the camera stop
    assert h.wait_for(lambda: "image on /camera/image_raw is" in h.last_diagnostics().get("hold_reason", ""), 5)
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_joint_names_parameter_maps_a_prefixed_driver(running):
    robot = [f"ur_{j}" for j in JOINTS]
    r = running(enable_on_start=True, instruction="reach the red ball", joint_names=robot,
                command_interface="joint_trajectory")
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.joint_names = robot
    h.start_streams()
    assert h.wait_for(lambda: len(h.trajectories) >= 3, timeout=20), h.last_diagnostics()
    assert list(h.trajectories[-1][1].joint_names) == robot  # commands name the robot's joints
    h.joint_names = list(JOINTS)  # the bundle's own names are not the robot's: a clear hold
    assert h.wait_for(lambda: "set the joint_names parameter" in h.last_diagnostics().get("hold_reason", ""), 10)


def test_joint_trajectory_interface(running):
    r = running(enable_on_start=True, instruction="reach the red ball", command_interface="joint_trajectory")
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams()
    assert h.wait_for(lambda: len(h.trajectories) >= 5, timeout=20)
    assert h.commands == []  # nothing on the position_array topic
    _, msg = h.trajectories[-1]
    assert list(msg.joint_names) == JOINTS
    assert len(msg.points) == 1 and len(msg.points[0].positions) == 7
    tfs = msg.points[0].time_from_start
    assert tfs.sec + tfs.nanosec * 1e-9 == pytest.approx(PERIOD)
    assert_safe_sequence([np.array(m.points[0].positions) for _, m in h.trajectories], STEP)


def test_bad_input_holds_reports_and_keeps_running(running):
    r = running(enable_on_start=True, instruction="reach the red ball")
    h = r.harness
    bad = rgb_image(64, 64)
    bad.encoding = "yuv422"
    h.image_msg = bad
    h.start_streams()
    assert h.wait_for(lambda: "unsupported image encoding 'yuv422'" in h.last_diagnostics().get("last_error", ""), 10)
    assert h.commands == []
    h.image_msg = rgb_image(64, 64)
    assert h.wait_for(lambda: len(h.commands) >= 3, timeout=10), "did not recover from a bad image"
    h.joint_names = JOINTS[:-1]  # the gripper disappears from /joint_states
    assert h.wait_for(lambda: "missing ['gripper_joint']" in h.last_diagnostics().get("hold_reason", ""), 10)
    n = len(h.commands)
    time.sleep(0.4)
    assert len(h.commands) <= n + 1
    h.joint_names = list(JOINTS)
    h.joint_pos = HOME.copy()
    h.joint_pos[2] = np.nan
    assert h.wait_for(lambda: "non-finite" in h.last_diagnostics().get("hold_reason", ""), 10)
    h.joint_pos = HOME.copy()
    resumed = time.monotonic()
    assert h.wait_for(lambda: len(h.commands_since(resumed)) >= 3, timeout=10)
    assert_safe_sequence([c for _, c in h.commands_since(resumed)], STEP)


def test_instruction_topic_change_resets_the_context(running):
    r = running(enable_on_start=True)
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams()
    time.sleep(0.5)
    assert h.commands == []  # no instruction yet
    assert "no instruction" in h.last_diagnostics().get("hold_reason", "") or not h.diagnostics
    from std_msgs.msg import String

    h.instruction_pub.publish(String(data="reach the blue cube"))
    assert h.wait_for(lambda: len(h.commands) >= 3, timeout=10)
    assert h.wait_for(lambda: h.last_diagnostics().get("instruction") == "reach the blue cube", timeout=5)
    # a new instruction starts a new episode: the runtime's timestep counter starts again; this one comes from a
    # volatile publisher (what `ros2 topic pub` uses), which a transient-local subscription alone would not match
    t_before = r.node.policy._t
    from rclpy.event_handler import PublisherEventCallbacks

    volatile = h.node.create_publisher(String, "/gato_policy/instruction", 10,  # (the latched sub cannot match)
                                       event_callbacks=PublisherEventCallbacks(incompatible_qos=lambda e: None))
    assert h.wait_for(lambda: volatile.get_subscription_count() >= 1, timeout=5)
    volatile.publish(String(data="reach the red ball"))
    assert h.wait_for(lambda: r.node.policy.instruction == "reach the red ball", timeout=5)
    assert r.node.policy._t < t_before + 3


def test_new_instruction_is_encoded_on_arrival_not_in_the_first_tick(running):
    """A new instruction's prefix is encoded when it arrives, between ticks, even while the node is disabled; the
    episode's first acting ticks keep it (no second encoding)."""
    r = running(enable_on_start=False)
    h = r.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams()
    policy = r.node.policy
    from std_msgs.msg import String

    h.instruction_pub.publish(String(data="reach the blue cube"))
    assert h.wait_for(lambda: policy._prefix_of is not None and policy._prefix_of[0] == "reach the blue cube",
                      timeout=10)
    time.sleep(0.3)
    assert h.commands == []  # disabled: no tick acted, the encoding came with the instruction
    encodings = policy._prefix_epoch
    assert h.enable(True).success
    assert h.wait_for(lambda: len(h.commands) >= 3, timeout=10), h.last_diagnostics()
    assert policy._prefix_epoch == encodings and policy.instruction == "reach the blue cube"


def test_missing_bundle_exits_at_start_with_one_clear_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gato_ros.ros.policy_node", "--ros-args", "-p",
                          f"model_path:={tmp_path / 'nope'}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "model_path" in lines[0], out.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "gato.json").write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "gato_ros.ros.policy_node", "--ros-args", "-p",
                          f"model_path:={tmp_path / 'broken'}"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "cannot load model bundle" in lines[0], out.stderr


def test_node_starts_without_torch():
    code = ("import sys; import gato_ros.ros.policy_node, gato_ros.runtime, gato_ros.ros.conversions; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cpu_dma_latency_request_is_held_while_the_node_runs(running):
    """cpu_dma_latency_us >= 0: the node holds /dev/cpu_dma_latency open (the PM QoS request) until destroyed."""
    import os

    def held() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == "/dev/cpu_dma_latency"
            except OSError:
                pass
        return n

    if not os.access("/dev/cpu_dma_latency", os.W_OK):
        pytest.skip("no write access to /dev/cpu_dma_latency here")
    before = held()  # the test session's own request (conftest)
    r = running(cpu_dma_latency_us=0)
    assert r.node._wakeup_fd is not None and held() == before + 1
    r.stop_node()
    assert held() == before
    r.start_node(cpu_dma_latency_us=-1)  # the default: no request
    assert r.node._wakeup_fd is None and held() == before
