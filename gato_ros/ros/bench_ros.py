"""`gato-ros bench --ros`: the control tick as the policy node runs it, message conversion and publish included.

    camera Image (W x H, rgb8) ──┐                     PolicyNode._tick (the node's own code, in this process)
    JointState (the bundle's   ──┼─ handed to the     ├ convert_inputs: staleness checks, JointState -> vectors,
      joints, following the      │  node's callbacks  │   Image -> the bundle's image size (decode + area resize)
      last command)              ┘  before each tick  ├ policy_act: the runtime policy (model tick of `bench`)
                                                      ├ publish_command: safety filter's command -> message -> DDS
                                                      └ other: safety filter, locks, bookkeeping, ~/timing

A real rclpy node around the benchmark's own runtime policy (the same sessions, provider and threads), on its own
context, with a subscriber on the command topic (so the publish has a matched reader
and serialises), the bundle's joints, instruction fixed, enabled. Messages are fresh objects with current stamps
for every tick (the node converts an image once per message), built outside the timed region; the arm "follows"
each command (the next joint state is the last command) so the tracking check never holds. A tick that held
instead of commanding is an error: the figures would not be a control tick. The camera's own DDS transport is
not in these figures (frames are handed to the callback; `make soak` measures delivery over DDS).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np


def bench_ros_tick(policy: Any, ticks: int, warmup: int, image_size: tuple[int, int] = (640, 480),
                   encoding: str = "rgb8", command_interface: str = "position_array", seed: int = 0) -> dict[str, Any]:
    """Time `ticks` node ticks of a PolicyNode around `policy` (a loaded RuntimePolicy) after `warmup` untimed
    ones; see the module docstring. `image_size` is (width, height) of the camera frames."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from gato_ros.bench import _pct
    from gato_ros.ros.conversions import encode_image
    from gato_ros.ros.policy_node import PolicyNode

    width, height = image_size
    context = rclpy.Context()
    rclpy.init(context=context)
    node = listener = None
    try:
        params = {"enable_on_start": True, "instruction": "reach the red ball",
                  "command_interface": command_interface, "cpu_dma_latency_us": -1}
        node = PolicyNode(policy, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                          context=context, node_name="gato_bench_policy")
        listener = rclpy.create_node("gato_bench_listener", context=context)
        delivered = []
        msg_type = Float64MultiArray if command_interface == "position_array" else JointTrajectory
        listener.create_subscription(msg_type, node.config.resolved_command_topic, delivered.append, 10)

        phases: dict[str, list[float]] = {"convert_inputs": [], "policy_act": [], "publish_command": []}
        timing = {"on": False}

        def timed(name, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    if timing["on"]:
                        phases[name].append((time.perf_counter() - t0) * 1e3)
            return wrapper

        node._observe = timed("convert_inputs", node._observe)
        policy.act = timed("policy_act", policy.act)  # an instance attribute over the method: removed below
        node._publish_command = timed("publish_command", node._publish_command)

        rng = np.random.default_rng(seed)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        names = list(node.joint_names)
        limits = node.safety.config
        position = np.clip(np.zeros(len(names)), limits.lower, limits.upper)  # inside the limits
        ticks_ms: list[float] = []
        for i in range(warmup + ticks):
            stamp = node.get_clock().now().to_msg()
            image = encode_image(frames[i % len(frames)], encoding)
            image.header.stamp = stamp
            joints = JointState(name=names, position=position.tolist(), velocity=[0.0] * len(names))
            joints.header.stamp = stamp
            node._on_image(image)
            node._on_joints(joints)
            timing["on"] = i >= warmup
            commands = node.commands
            t0 = time.perf_counter()
            node._tick()
            dt = (time.perf_counter() - t0) * 1e3
            if node.commands != commands + 1:
                raise RuntimeError(f"bench --ros: tick {i} held instead of commanding ({node.hold_reason!r}); the "
                                   "figures would not be a control tick")
            if timing["on"]:
                ticks_ms.append(dt)
            last = node.safety.last_command
            position = np.asarray(last, dtype=np.float64).copy()  # the arm follows the command
        reader = SingleThreadedExecutor(context=context)
        reader.add_node(listener)
        deadline = time.monotonic() + 2.0  # the listener's queue holds the last 10 commands: read them back
        while time.monotonic() < deadline and len(delivered) < min(10, warmup + ticks):
            reader.spin_once(timeout_sec=0.1)
        reader.shutdown()
        p50 = {k: float(np.percentile(v, 50)) for k, v in phases.items()}
        tick50 = float(np.percentile(ticks_ms, 50))
        return {
            "image": {"width": width, "height": height, "encoding": encoding, "bytes": int(frames[0].nbytes)},
            "command_interface": command_interface,
            "tick_ms": _pct([t / 1e3 for t in ticks_ms]),
            "breakdown_ms": {**{k: round(v, 4) for k, v in p50.items()},
                             "other": round(max(0.0, tick50 - sum(p50.values())), 4)},
            "ticks": ticks,
            "commands_delivered": len(delivered),  # read back over DDS after the run (the listener keeps 10)
        }
    finally:
        policy.__dict__.pop("act", None)
        if node is not None:
            node.destroy_node()
        if listener is not None:
            listener.destroy_node()
        rclpy.try_shutdown(context=context)
