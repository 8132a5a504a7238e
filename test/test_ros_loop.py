"""Sim node + policy node as separate processes (the graph of arm.launch.py via `gato_ros.ros.launcher`), closing
the loop over DDS on loopback with the real runtime on an exported tiny bundle, for both command interfaces."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")
pytest.importorskip("mujoco", reason="the sim needs MuJoCo (pip install -e '.[sim]')")
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from gato_ros.ros.launcher import GraphProcesses  # noqa: E402
from ros_support import assert_safe_sequence, tiny_bundle  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow, pytest.mark.timeout(180)]
RATE = 20.0
STEP = np.array([0.1] * 6 + [0.01])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


class LoopProbe:
    def __init__(self, context):
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String
        from trajectory_msgs.msg import JointTrajectory

        self.node = rclpy.create_node("loop_probe", context=context)
        self.lock = threading.Lock()
        self.commands, self.joints, self.episodes, self.timing = [], [], [], []
        n = self.node
        n.create_subscription(Float64MultiArray, "/position_controller/commands",
                              lambda m: self._add(self.commands, np.array(m.data)), 50)
        n.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                              lambda m: self._add(self.commands, np.array(m.points[0].positions)), 50)
        n.create_subscription(JointState, "/joint_states",
                              lambda m: self._add(self.joints, np.array(m.position[:7])), qos_profile_sensor_data)
        n.create_subscription(String, "/gato_sim/episode", lambda m: self._add(self.episodes, json.loads(m.data)), 50)
        n.create_subscription(Float64MultiArray, "/gato_policy/timing", lambda m: self._add(self.timing, list(m.data)),
                              50)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _add(self, bucket, item):
        with self.lock:
            bucket.append((time.monotonic(), item))

    def since(self, bucket, t):
        with self.lock:
            return [x for ts, x in bucket if ts >= t]

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()


@pytest.mark.parametrize("interface, sim_time", [("position_array", "false"), ("joint_trajectory", "false"),
                                                ("position_array", "true")])
def test_sim_and_policy_close_the_loop(bundle, interface, sim_time, tmp_path):
    """use_sim_time:=true: the policy's timer and staleness checks run on the sim's /clock and stamps."""
    args = {"model": str(bundle), "command_interface": interface, "task": "pick_place", "seed": "3",
            "auto_reset": "false", "execution_provider": "cpu", "use_sim_time": sim_time}
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = LoopProbe(context)
    graph = GraphProcesses(args, echo=False, log_dir=tmp_path)
    try:
        graph.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(probe.commands) < 5:
            assert not graph.exited(), f"a node died: {graph.exited()}\n{graph.tail('gato_policy')}"
            time.sleep(0.1)
        assert len(probe.commands) >= 5, f"no commands:\n{graph.tail('gato_policy')}\n{graph.tail('gato_sim')}"
        t0 = time.monotonic()
        time.sleep(3.0)
        cmds = probe.since(probe.commands, t0)
        steps = [e["step"] for e in probe.since(probe.episodes, t0)]
        timing = probe.since(probe.timing, t0)
        # Commands at the configured rate: never faster, one period apart while commanding (a starved 2-core CI box
        # may drop ticks or hold on a late camera frame, which shows as fewer commands, not a different spacing),
        # and the sim stepping with them.
        why = (f"; policy ticks seen {len(timing)} (commanded {sum(t[2] > 0.5 for t in timing)}), sim steps "
               f"{steps[0]}..{steps[-1]}\npolicy log:\n{graph.tail('gato_policy')}")
        assert 10 <= len(cmds) <= 64, f"{len(cmds)} commands in 3 s at {RATE} Hz{why}"
        spacing = np.median(np.diff([t for t, _ in list(probe.commands) if t >= t0]))
        assert 0.7 / RATE < spacing < 1.6 / RATE, f"median command spacing {spacing * 1e3:.1f} ms{why}"
        assert steps[-1] - steps[0] >= 10
        assert_safe_sequence([c for _, c in probe.commands], STEP)
        # the arm follows the commands: position-controlled joints end up near the last command
        time.sleep(0.5)
        last_cmd, last_pos = probe.commands[-1][1], probe.joints[-1][1]
        assert np.max(np.abs(last_cmd[:6] - last_pos[:6])) < 0.15
        moved = np.max(np.abs(probe.joints[-1][1][:6] - probe.joints[0][1][:6]))
        assert moved > 0.01, "the arm did not move under the policy's commands"
        assert not graph.exited()
        e2e = np.array([t[1] for t in timing if t[2] > 0.5 and np.isfinite(t[1])])
        tick = np.array([t[0] for t in timing if t[2] > 0.5])
        report = {"interface": interface, "use_sim_time": sim_time, "rate_hz": RATE, "commands_in_3s": len(cmds),
                  "tick_ms": {"p50": float(np.percentile(tick, 50)), "p99": float(np.percentile(tick, 99))}}
        if sim_time == "false":  # sim-time stamps cannot be compared with the wall clock
            report["image_to_command_ms"] = {"p50": float(np.percentile(e2e, 50)), "p99": float(np.percentile(e2e, 99))}
            assert len(e2e) >= 5 and np.all(e2e > 0)
        print(json.dumps(report))
    finally:
        codes = graph.stop()
        probe.close()
        rclpy.try_shutdown(context=context)
        graph.close()
    unclean = {name: rc for name, rc in codes.items() if rc not in (0, -2)}
    # a node stuck in shutdown printed its threads' stacks into its log (run_node's guard, or SIGUSR1 from stop())
    assert not unclean, f"unclean shutdown: {codes}; still running after SIGINT: {sorted(graph.stuck)}\n" + "\n".join(
        f"--- {name} log:\n{graph.tail(name, 80)}" for name in unclean)


def test_ros_path_reproduces_the_direct_episode_action_for_action(bundle, tmp_path):
    """eval --ros's claim, made exact: with trigger:=image and the sim in lockstep, the node graph computes the
    same actions as calling the runtime directly on the same seed (same frames, same joint states, bit for bit
    through DDS), so the episodes are the same episodes."""
    from gato_ros.runtime import RuntimePolicy
    from gato_ros.sim import ArmEnv, EnvConfig
    from gato_ros.sim.rollout import run_episode

    env = ArmEnv(EnvConfig(image_size=64))
    policy = RuntimePolicy.load(str(bundle), execution_provider="cpu", threads=1)
    direct = run_episode(env, policy, seed=11, task="reach", record=True)
    env.close()
    rec, commands = _graph_episode(bundle, "reach", 11, tmp_path)
    assert rec.steps == direct.steps and rec.success == direct.success and rec.instruction == direct.instruction
    assert rec.clamped == 0  # the precondition: the node's safety filter passed every action unchanged
    # the sim stops stepping at the budget; the policy may answer the last frame too
    assert len(commands) in (direct.steps, direct.steps + 1), f"{len(commands)} commands for {direct.steps} steps"
    np.testing.assert_allclose(commands[: direct.steps], direct.actions, rtol=0, atol=1e-9)


def _graph_episode(bundle, task: str, seed: int, tmp_path):
    """One eval --ros episode through the node graph: its record and the commands the policy node published."""
    from gato_ros.ros.eval_ros import GraphClient, graph_arguments

    rclpy.init()
    probe = LoopProbe(None)
    graph = GraphProcesses(graph_arguments(bundle, "cpu"), echo=False, log_dir=tmp_path)
    client = None
    try:
        graph.start()
        client = GraphClient()
        client.wait_ready(graph)
        t0 = time.monotonic()
        rec = client.run_episode(task, seed, timeout_s=120, graph=graph)
        commands = np.array(probe.since(probe.commands, t0))
    finally:
        if client is not None:
            client.close()
        probe.close()
        graph.close()
        rclpy.try_shutdown()
    return rec, commands


SHIPPED = Path(__file__).resolve().parents[1] / "models" / "gato_arm_small"


@pytest.mark.skipif(not (SHIPPED / "gato.json").is_file(), reason="the shipped bundle is not in this checkout")
def test_ros_path_equals_the_direct_episode_behind_the_node_limits(tmp_path):
    """When the node's safety filter changes commands (the shipped bundle opens and closes the gripper faster than
    max_gripper_step_m allows), the graph's episode is the direct one behind the same filter (`LimitedPolicy`, what
    `eval --node-limits` runs), action for action, with the same commands counted as clamped."""
    from gato_ros.ros.policy_config import PolicyNodeConfig, safety_config
    from gato_ros.runtime import RuntimePolicy
    from gato_ros.safety import LimitedPolicy
    from gato_ros.sim import ArmEnv, EnvConfig
    from gato_ros.sim.rollout import run_episode

    env = ArmEnv(EnvConfig(image_size=64))
    inner = RuntimePolicy.load(str(SHIPPED), execution_provider="cpu", threads=1)
    limited = LimitedPolicy(inner, safety_config(PolicyNodeConfig(), inner.joint_names, inner.joint_limits))
    direct = run_episode(env, limited, seed=1_000_003, task="pick_place", record=True)
    raw = run_episode(env, inner, seed=1_000_003, task="pick_place")
    env.close()
    assert limited.clamped > 0 and raw.steps != direct.steps  # the filter mattered in this episode
    rec, commands = _graph_episode(SHIPPED, "pick_place", 1_000_003, tmp_path)
    assert rec.steps == direct.steps and rec.success == direct.success
    assert rec.clamped == limited.clamped
    assert len(commands) in (direct.steps, direct.steps + 1), f"{len(commands)} commands for {direct.steps} steps"
    np.testing.assert_allclose(commands[: direct.steps], direct.actions, rtol=0, atol=1e-9)
