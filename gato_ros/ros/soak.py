"""Soak test of the policy node (`make soak`; `python -m gato_ros.ros.soak --duration 600 --json`).

    child process "robot" (python -m gato_ros.ros.soak --robot)        this process
    ──────────────────────────────────────────────────────            ──────────────────────────────────────────
    /camera/image_raw   30 Hz 640x480 rgb8  ──────── DDS ────────>    PolicyNode (shipped bundle, 20 Hz, enabled)
    /joint_states      200 Hz (positions follow the last command)        │ counts received messages
    <── /position_controller/commands ───────────────────────────────────┘ ~/timing (tick ms) -> tick statistics
                                                                       RSS of this process after warm-up and at end

The publishers run in their own process, as a camera driver and an arm driver would: in this process they would
share the node's interpreter lock and inflate its tick times. The "robot" follows the commands (a perfect position
controller), so the node's tracking check never fires and every tick runs the model.

Reports (JSON with --json): RSS at start (after warm-up) and end and growth %, tick p50/p99/max, deadline misses
(count, % of ticks), messages published by the robot vs received by the node per sensor stream (dropped =
published - received, counted over the whole run), commands published. The issue's targets: memory growth < 5%,
deadline misses < 0.5%.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gato_ros.ros.graph import PROFILE_VARIABLES, dds_environment


@dataclass
class SoakArgs:
    """Command-line arguments of the soak (also used by the robot child process)."""

    duration: float = 600.0
    """Seconds of measurement after the warm-up."""
    warmup: float = 10.0
    """Seconds of running before the start RSS is taken (model sessions and caches settle)."""
    model: str = ""
    """Bundle directory; empty: the shipped models/gato_arm_small."""
    camera_hz: float = 30.0
    joints_hz: float = 200.0
    rate: float = 20.0
    """Policy control rate (Hz)."""
    width: int = 640
    height: int = 480
    instruction: str = "reach the red ball"
    json: bool = False
    """Print the report as one JSON object."""


def parse_args(argv: list[str] | None) -> tuple[SoakArgs, bool]:
    p = argparse.ArgumentParser(prog="python -m gato_ros.ros.soak", description=__doc__.split("\n\n")[0])
    defaults = SoakArgs()
    for name in ("duration", "warmup", "camera_hz", "joints_hz", "rate"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("width", "height"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--instruction", default=defaults.instruction)
    p.add_argument("--json", action="store_true")
    p.add_argument("--robot", action="store_true", help=argparse.SUPPRESS)  # the child process
    ns = vars(p.parse_args(argv))
    robot = ns.pop("robot")
    return SoakArgs(**ns), robot


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---- the robot (child process) ------------------------------------------------------------------------------
def run_robot(args: SoakArgs) -> int:
    """Publish camera and joint states until SIGINT, follow the commands; print counts as JSON on stdout."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    from gato_ros.ros.conversions import encode_image
    from gato_ros.ros.policy_config import PolicyNodeConfig

    rclpy.init()
    node = rclpy.create_node("gato_soak_robot")
    meta = json.loads((PolicyNodeConfig(model_path=args.model).resolved_model_path / "gato.json").read_text())
    names = [str(n) for n in meta["joint_names"]]
    limits = np.asarray(meta["joint_limits"], dtype=np.float64)
    position = limits.mean(axis=1)  # mid-range, inside the limits
    rng = np.random.default_rng(0)
    frames = [encode_image(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8), "rgb8")
              for _ in range(8)]  # a few distinct frames, cycled: content changes, generation costs nothing
    image_pub = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    joint_pub = node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    counts = {"images": 0, "joint_states": 0, "commands": 0}
    lock = threading.Lock()

    def on_command(msg) -> None:
        nonlocal position
        with lock:
            position = np.asarray(msg.data, dtype=np.float64)
            counts["commands"] += 1

    node.create_subscription(Float64MultiArray, "/position_controller/commands", on_command, 10)

    def publish_image() -> None:
        msg = frames[counts["images"] % len(frames)]
        msg.header.stamp = node.get_clock().now().to_msg()
        image_pub.publish(msg)
        counts["images"] += 1

    def publish_joints() -> None:
        with lock:
            pos = position.tolist()
        msg = JointState(name=names, position=pos, velocity=[0.0] * len(names))
        msg.header.stamp = node.get_clock().now().to_msg()
        joint_pub.publish(msg)
        counts["joint_states"] += 1

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while image_pub.get_subscription_count() == 0 or joint_pub.get_subscription_count() == 0:
        if stop.wait(0.05):
            break
    loops = [threading.Thread(target=_loop, args=(hz, fn, stop), daemon=True)
             for hz, fn in ((args.camera_hz, publish_image), (args.joints_hz, publish_joints))]
    for t in loops:
        t.start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    stop.set()
    for t in loops:
        t.join(timeout=2.0)
    print(json.dumps(counts), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _loop(hz: float, fn, stop: threading.Event) -> None:
    """Call fn at hz on an absolute schedule (late calls do not shift the later ones)."""
    next_t = time.monotonic()
    while not stop.is_set():
        fn()
        next_t += 1.0 / hz
        stop.wait(max(0.0, next_t - time.monotonic()))


# ---- the node side (this process) ---------------------------------------------------------------------------
def run_soak(args: SoakArgs, progress=None) -> dict:
    import rclpy
    from rclpy.parameter import Parameter
    from std_msgs.msg import Float64MultiArray

    from gato_ros.ros.executor import ThreadedExecutor
    from gato_ros.ros.policy_node import PolicyNode

    rclpy.init()
    params = {"control_rate_hz": args.rate, "enable_on_start": True, "instruction": args.instruction}
    if args.model:
        params["model_path"] = args.model
    node = PolicyNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    collector = rclpy.create_node("gato_soak_collector")
    ticks: list[tuple[float, float]] = []  # (arrival, tick ms)
    collector.create_subscription(Float64MultiArray, "/gato_policy/timing",
                                  lambda m: ticks.append((time.monotonic(), m.data[0])), 100)
    executor = ThreadedExecutor(num_threads=3)  # as gato_policy_node runs it
    executor.add_node(node)
    executor.add_node(collector)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    # The robot publishes the camera frames (640x480: over Fast DDS's default 512 kB segment), so it runs with
    # config/fastdds.xml, as a camera driver must; only a publisher's segment matters
    robot_env = {**os.environ, **dds_environment()}
    robot = subprocess.Popen(
        [sys.executable, "-m", "gato_ros.ros.soak", "--robot", "--model", args.model, "--camera-hz",
         str(args.camera_hz), "--joints-hz", str(args.joints_hz), "--width", str(args.width), "--height",
         str(args.height)], stdout=subprocess.PIPE, text=True, env=robot_env)
    try:
        while not node.commands:  # warm-up starts at the first command: the robot is connected, the model runs
            if robot.poll() is not None:
                raise RuntimeError(f"the robot process exited early with code {robot.returncode}")
            time.sleep(0.1)
        time.sleep(args.warmup)
        start, rss_start = time.monotonic(), rss_mb()
        base = {"ticks": node.ticks, "misses": node.deadline_misses, "commands": node.commands}
        end = start + args.duration
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            if progress is not None:
                progress(time.monotonic() - start, node)
            if robot.poll() is not None:
                raise RuntimeError(f"the robot process exited early with code {robot.returncode}")
        rss_end = rss_mb()
        window = [ms for t, ms in ticks if t >= start]
        counted = {"ticks": node.ticks - base["ticks"], "misses": node.deadline_misses - base["misses"],
                   "commands": node.commands - base["commands"]}
        robot.send_signal(signal.SIGINT)
        out, _ = robot.communicate(timeout=30)
        published = json.loads(out.strip().splitlines()[-1])
        time.sleep(0.5)  # the last messages in flight reach the node
        report = _report(args, node, counted, window, rss_start, rss_end, published)
        report["camera_dds_profile"] = next((robot_env[v] for v in PROFILE_VARIABLES if robot_env.get(v)), None)
    finally:
        if robot.poll() is None:
            robot.kill()
        executor.shutdown()
        spinner.join(timeout=5)
        node.destroy_node()
        collector.destroy_node()
        rclpy.try_shutdown()
    return report


def _report(args, node, counted, window, rss_start, rss_end, published) -> dict:
    """The JSON report; `counted` holds the node's tick, miss and command counts over the measured window."""
    ticks, misses = counted["ticks"], counted["misses"]
    received = {"images": node.images_received, "joint_states": node.joint_states_received}
    messages = {}
    for key, got in received.items():
        sent = int(published[key])
        messages[key] = {"published": sent, "received": got, "dropped": max(0, sent - got),
                         "dropped_pct": 100.0 * max(0, sent - got) / sent if sent else 0.0}
    from gato_ros.evaluation import percentiles

    return {
        "model": node.model_path,
        "provider": node.provider,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rates_hz": {"camera": args.camera_hz, "joint_states": args.joints_hz, "control": args.rate},
        "image_size": [args.width, args.height],
        "memory_mb": {"rss_start": rss_start, "rss_end": rss_end,
                      "growth_pct": 100.0 * (rss_end - rss_start) / rss_start},
        "tick_ms": percentiles(window) | {"samples": len(window)},
        "ticks": ticks,
        "deadline_misses": {"count": misses, "pct": 100.0 * misses / ticks if ticks else 0.0},
        "messages": messages,
        # "published": over the measured window; the robot counts the whole run, so compare it with published_total
        "commands": {"published": counted["commands"], "published_total": node.commands,
                     "received_by_robot": int(published["commands"])},
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m gato_ros.ros.soak [--duration S] [--json]`; see the module docstring."""
    args, robot = parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # DDS stays on this machine
    if robot:
        return run_robot(args)

    def progress(elapsed: float, node) -> None:
        print(f"soak: {elapsed:5.0f}/{args.duration:g} s, {node.ticks} ticks, {node.deadline_misses} deadline "
              f"misses, RSS {rss_mb():.0f} MiB", file=sys.stderr, flush=True)

    report = run_soak(args, progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m, t, d = report["memory_mb"], report["tick_ms"], report["deadline_misses"]
        print(f"{report['duration_s']:g} s on {report['provider']}: RSS {m['rss_start']:.0f} -> {m['rss_end']:.0f} MiB "
              f"({m['growth_pct']:+.2f}%), tick p50 {t['p50']:.1f} p99 {t['p99']:.1f} max {t['max']:.1f} ms, "
              f"deadline misses {d['count']} ({d['pct']:.2f}%)")
        for key, v in report["messages"].items():
            print(f"  {key}: {v['published']} published, {v['received']} received, {v['dropped']} dropped")
        print(f"  commands: {report['commands']['published']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
