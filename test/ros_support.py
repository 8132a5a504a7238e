"""Helpers for the ROS tests: a tiny real bundle, a harness node that plays sensors and records commands.

The bundle is a randomly initialised `gato-tiny` model exported with the model engineer's real export code (ONNX
graphs checked against torch): nothing is trained, so its actions are arbitrary but its inputs, outputs, timing
and failure modes are the real runtime's. It is built once per test session (cached here at module level, as
several test modules import this helper).

The harness publishes on the topics a robot driver would (images in any encoding and size, joint states in any
order) and records what the policy node publishes, with arrival times, all over real DDS on loopback.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
          "wrist_3_joint", "gripper_joint"]
LIMITS = [[-6.28319, 6.28319]] * 2 + [[-3.1415, 3.1415]] + [[-6.28319, 6.28319]] * 3 + [[0.0, 0.0425]]
HOME = np.array([-1.5708, -1.5708, 1.5708, -1.5708, -1.5708, 0.0, 0.04])

_BUNDLE: dict[str, Path] = {}


def call_service(client, request, timeout: float = 10.0):
    """Call a service from a test thread while an executor elsewhere spins the client's node; the response."""
    assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not available"
    future = client.call_async(request)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), f"{client.srv_name} did not answer"
    return future.result()


def tiny_bundle(tmp_path_factory) -> Path:
    """Export (once per session) an untrained gato-tiny bundle for the sim's 7 joints."""
    if "path" not in _BUNDLE:
        pytest.importorskip("torch", reason="exporting the test bundle needs torch (pip install -e '.[train]')")
        import torch

        from gato_ros.model.config import preset
        from gato_ros.model.export import export_checkpoint
        from gato_ros.model.model import GatoModel
        from gato_ros.sequence import ActionNormalizer

        torch.manual_seed(0)
        cfg = preset("gato-tiny")
        model = GatoModel(cfg)
        a = cfg.spec.action_size
        # delta mode: targets within +-0.02 rad of the current arm position and +-4 mm of the gripper opening:
        # small, like a trained policy's, and inside the node's step limits (0.1 rad, 10 mm per tick), so the
        # safety filter never has to clamp them and the ROS path can be compared step for step with the direct one
        half = np.array([0.02] * (a - 1) + [0.004])
        normalizer = ActionNormalizer(cfg.action_mode, -half, half)
        ckpt = {"config": cfg.to_dict(), "model": model.state_dict(), "normalizer": normalizer.to_dict(),
                "robot": {"joint_names": JOINTS, "joint_limits": LIMITS, "control_rate_hz": 20.0},
                "git_commit": "test-fixture", "step": 0}
        out = tmp_path_factory.mktemp("bundles") / "gato_tiny_untrained"
        export_checkpoint(ckpt, out, rollout_steps=4)
        _BUNDLE["path"] = out
    return _BUNDLE["path"]


class Harness:
    """A node that plays camera and joint-state streams and records the policy node's outputs."""

    def __init__(self, context, policy_name: str = "gato_policy"):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger
        from trajectory_msgs.msg import JointTrajectory

        import rclpy

        self.node = rclpy.create_node("test_harness", context=context)
        n = self.node
        self.image_pub = n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.joint_pub = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        latched = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = n.create_publisher(String, f"/{policy_name}/instruction", latched)
        # best effort, like many hardware-button drivers (the node must match those too)
        from rclpy.event_handler import PublisherEventCallbacks

        self.estop_pub = n.create_publisher(Bool, f"/{policy_name}/estop", qos_profile_sensor_data,
                                            event_callbacks=PublisherEventCallbacks(incompatible_qos=lambda e: None))
        self.lock = threading.Lock()
        self.commands: list[tuple[float, np.ndarray]] = []
        self.trajectories: list[tuple[float, object]] = []
        self.diagnostics: list[dict] = []
        self.timing: list[tuple[float, ...]] = []
        n.create_subscription(Float64MultiArray, "/position_controller/commands",
                              lambda m: self._add(self.commands, np.array(m.data)), 50)
        n.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                              lambda m: self._add(self.trajectories, m), 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        n.create_subscription(Float64MultiArray, f"/{policy_name}/timing",
                              lambda m: self._add(self.timing, tuple(m.data)), 50)
        self.enable_client = n.create_client(SetBool, f"/{policy_name}/enable")
        self.estop_client = n.create_client(Trigger, f"/{policy_name}/estop")
        self.reset_estop_client = n.create_client(Trigger, f"/{policy_name}/reset_estop")
        self._types = (Image, JointState, SetBool, Trigger)
        self.image_msg = None  # what the camera loop publishes (None: camera off)
        self.joint_names = list(JOINTS)
        self.joint_pos = HOME.copy()
        self.joint_extra: dict[str, float] = {}
        self.joints_on = True  # False: the joint-state loop publishes nothing (the driver stopped)
        self.last_image_time = self.last_joint_time = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _add(self, bucket, item) -> None:
        with self.lock:
            bucket.append((time.monotonic(), item))

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            if s.name.startswith("gato_policy"):
                d = {kv.key: kv.value for kv in s.values}
                d["_level"] = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                d["_message"] = s.message
                d["_t"] = time.monotonic()
                with self.lock:
                    self.diagnostics.append(d)

    # ---- streams -------------------------------------------------------------------------------------------
    def start_streams(self, camera_hz: float = 30.0, joints_hz: float = 50.0) -> None:
        self._threads = [threading.Thread(target=self._loop, args=(camera_hz, self._publish_image), daemon=True),
                         threading.Thread(target=self._loop, args=(joints_hz, self._publish_joints), daemon=True)]
        for t in self._threads:
            t.start()

    def _loop(self, hz: float, fn) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            fn()
            next_t += 1.0 / hz
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _publish_image(self) -> None:
        msg = self.image_msg
        if msg is None:
            return
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.image_pub.publish(msg)
        self.last_image_time = time.monotonic()

    def _publish_joints(self) -> None:
        if not self.joints_on:
            return
        js = self._types[1]()
        js.header.stamp = self.node.get_clock().now().to_msg()
        names = list(self.joint_names) + list(self.joint_extra)
        pos = {n: float(p) for n, p in zip(JOINTS, self.joint_pos)} | self.joint_extra
        js.name = names
        js.position = [pos.get(n, 0.0) for n in names]
        js.velocity = [0.0] * len(names)
        self.joint_pub.publish(js)
        self.last_joint_time = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)

    # ---- services ------------------------------------------------------------------------------------------
    def call(self, client, request, timeout: float = 10.0):
        return call_service(client, request, timeout)

    def enable(self, on: bool):
        req = self._types[2].Request()
        req.data = on
        return self.call(self.enable_client, req)

    def trigger(self, client):
        return self.call(client, self._types[3].Request())

    # ---- observation helpers -------------------------------------------------------------------------------
    def commands_since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self.lock:
            return [c for c in self.commands if c[0] >= t]

    def wait_for(self, predicate, timeout: float = 10.0, poll: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return predicate()

    def last_diagnostics(self) -> dict:
        with self.lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}


class Running:
    """A policy node + harness spinning on one ThreadedExecutor (gato_ros.ros.executor) in a background thread.

    `policy` (optional) is handed to the node instead of loading the bundle, e.g. a fault-injecting wrapper around
    the real RuntimePolicy. `stop_node()` destroys the policy node and `start_node()` builds a new one with the same
    parameters, while the harness keeps playing its streams (a node restarted mid-episode).
    """

    def __init__(self, context, bundle, rate: float = 20.0, policy=None, **params):
        from gato_ros.ros.executor import ThreadedExecutor

        self.context, self._policy = context, policy
        self.overrides = {"model_path": str(bundle), "control_rate_hz": rate, "execution_provider": "cpu",
                          "inference_threads": 1, **params}
        self.node = self._make_node()
        self.harness = Harness(context)
        self.executor = ThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.harness.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _make_node(self):
        from rclpy.parameter import Parameter

        from gato_ros.ros.policy_node import PolicyNode

        return PolicyNode(policy=self._policy, context=self.context,
                          parameter_overrides=[Parameter(k, value=v) for k, v in self.overrides.items()])

    def stop_node(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()

    def start_node(self, **params) -> None:
        self.overrides.update(params)
        self.node = self._make_node()
        self.executor.add_node(self.node)

    def close(self):
        self.harness.stop()
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.harness.node.destroy_node()


def rgb_image(height: int, width: int, encoding: str = "rgb8", seed: int = 0):
    from gato_ros.ros.conversions import encode_image

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    msg = encode_image(rgb, encoding)
    msg.header.frame_id = "camera_optical_frame"
    return msg


def assert_safe_sequence(commands: list[np.ndarray], max_step: np.ndarray, limits=LIMITS) -> None:
    """Every command inside the joint limits, finite, and within max_step of the one before."""
    lim = np.asarray(limits)
    for i, c in enumerate(commands):
        assert np.all(np.isfinite(c)), f"command {i} not finite: {c}"
        assert np.all(c >= lim[:, 0] - 1e-12) and np.all(c <= lim[:, 1] + 1e-12), f"command {i} outside limits"
        if i:
            assert np.all(np.abs(c - commands[i - 1]) <= max_step + 1e-9), f"command {i} steps too far"
