"""`gato-ros eval --ros`: the evaluation episodes run through the node graph over DDS, same JSON as without ROS.

    gato-ros eval ──> GraphProcesses (gato_sim + gato_policy as subprocesses, auto_reset:=false)
         │
         └─ GraphClient (a node in this process)
              per episode: ~/enable false ─> set gato_sim task/seed ─> ~/reset_episode ─> ~/enable true
                           ─> follow /gato_sim/episode until done; collect gato_policy/timing (and frames)

Episode i of each task uses sim seed `seed + i`, exactly as `gato_ros.evaluation.evaluate` does, so the two paths
meet the same layouts. They do not take identical steps: over ROS the policy ticks on its own timer, so an action
reaches the sim one tick after the image it was computed from (as in the ROS-free loop) only when inference and
transport fit in the period; the difference is what this path measures.

`tick_ms` is the policy node's whole tick (conversion, inference, safety filter, publish) on commanded ticks;
`image_to_command_ms` (an addition) is image stamp to command publish.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


class GraphError(RuntimeError):
    """The node graph did not come up or stopped answering; the text says which node and why."""


@dataclass
class EpisodeRecord:
    task: str
    instruction: str
    seed: int
    success: bool
    steps: int
    tick_ms: list[float] = field(default_factory=list)
    image_to_command_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    clamped: int = 0
    """Commands the policy node's safety filter changed (joint or step limits): while it is 0, the episode is the
    direct eval's action for action."""


class GraphClient:
    """A small rclpy node that drives a running sim + policy graph episode by episode.

    rclpy must be initialised by the caller; the client spins its own executor on a background thread.
    on_frame(rgb, episode_msg) is called for every camera image during an episode (for videos).
    """

    def __init__(self, policy_node: str = "gato_policy", sim_node: str = "gato_sim",
                 on_frame: Callable[[np.ndarray, dict], None] | None = None):
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool, Trigger

        import rclpy

        self.node = rclpy.create_node(f"gato_eval_{os.getpid()}")
        self._lock = threading.Lock()
        self.episode_msg: dict = {}
        self._episode_event = threading.Event()
        self._timing: list[tuple[float, float, float, float]] = []  # tick_ms, e2e, commanded, clamped
        self._recording = False
        self.on_frame = on_frame
        n = self.node
        n.create_subscription(String, f"/{sim_node}/episode", self._on_episode, 10)
        n.create_subscription(Float64MultiArray, f"/{policy_node}/timing", self._on_timing, 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._diag_name = f"{policy_node}: control loop"
        self._diag: dict[str, str] = {}
        if on_frame is not None:
            from gato_ros.ros.conversions import decode_image

            self._decode = decode_image
            n.create_subscription(Image, "/camera/image_raw", self._on_image, qos_profile_sensor_data)
        self.enable_client = n.create_client(SetBool, f"/{policy_node}/enable")
        self.reset_client = n.create_client(Trigger, f"/{sim_node}/reset_episode")
        self.params_client = n.create_client(SetParameters, f"/{sim_node}/set_parameters")
        self._types = (SetBool, Trigger, SetParameters)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    # ---- callbacks -----------------------------------------------------------------------------------------
    def _on_episode(self, msg) -> None:
        data = json.loads(msg.data)
        with self._lock:
            self.episode_msg = data
        self._episode_event.set()

    def _on_timing(self, msg) -> None:
        if self._recording and len(msg.data) >= 3:
            with self._lock:
                clamped = float(msg.data[3]) if len(msg.data) > 3 else 0.0
                self._timing.append((float(msg.data[0]), float(msg.data[1]), float(msg.data[2]), clamped))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == self._diag_name:
                with self._lock:
                    self._diag = {kv.key: kv.value for kv in status.values}

    def diagnostics(self) -> dict[str, Any]:
        """The policy node's last /diagnostics values, numbers parsed."""
        with self._lock:
            raw = dict(self._diag)
        out: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
            except ValueError:
                out[k] = v
        return out

    def _on_image(self, msg) -> None:
        if self._recording and self.on_frame is not None:
            with self._lock:
                ep = dict(self.episode_msg)
            self.on_frame(self._decode(msg), ep)

    # ---- calls ---------------------------------------------------------------------------------------------
    def _call(self, client, request, timeout: float = 20.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise GraphError(f"service {client.srv_name} is not available after {timeout:g} s")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise GraphError(f"service {client.srv_name} did not answer within {timeout:g} s")
        return future.result()

    def wait_ready(self, graph=None, timeout: float = 90.0) -> None:
        """Wait for the sim's episode stream and both services; fail early if a node process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if graph is not None and graph.exited():
                name, rc = next(iter(graph.exited().items()))
                raise GraphError(f"{name} exited with code {rc} during start-up:\n{graph.tail(name)}")
            if (self._episode_event.is_set() and self.enable_client.service_is_ready()
                    and self.reset_client.service_is_ready()):
                return
            time.sleep(0.1)
        raise GraphError(f"the node graph did not come up within {timeout:g} s (no /gato_sim/episode or services)")

    def enable(self, on: bool) -> None:
        req = self._types[0].Request()
        req.data = bool(on)
        res = self._call(self.enable_client, req)
        if not res.success:
            raise GraphError(f"~/enable {on} refused: {res.message}")

    def set_sim(self, **values: Any) -> None:
        from rclpy.parameter import Parameter

        req = self._types[2].Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        res = self._call(self.params_client, req)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise GraphError(f"gato_sim refused parameters {values}: {bad}")

    def reset_episode(self) -> dict:
        res = self._call(self.reset_client, self._types[1].Request())
        if not res.success:
            raise GraphError(f"~/reset_episode failed: {res.message}")
        return json.loads(res.message)

    def next_episode_state(self, episode: int, graph=None, wait_s: float = 0.2) -> dict | None:
        """The sim's latest ~/episode message once a new one arrives (or after wait_s), if it is of `episode`;
        else None. Raises GraphError if a process of `graph` has exited."""
        if graph is not None and graph.exited():
            name, rc = next(iter(graph.exited().items()))
            raise GraphError(f"{name} exited with code {rc} mid-episode:\n{graph.tail(name)}")
        self._episode_event.wait(wait_s)
        self._episode_event.clear()
        with self._lock:
            msg = dict(self.episode_msg)
        return msg if msg.get("episode") == episode else None

    def run_episode(self, task: str, seed: int, timeout_s: float, graph=None) -> EpisodeRecord:
        """One episode through the graph (see the module docstring); returns its outcome and timings."""
        self.enable(False)
        # The policy is disabled across the reset, so no stale command can be in flight: no grace period needed.
        self.set_sim(task=task, seed=int(seed), lockstep=True, reset_grace_s=0.0)
        info = self.reset_episode()
        with self._lock:
            self._timing.clear()
        self._recording = True
        t0 = time.monotonic()
        self.enable(True)
        last = {}
        try:
            while time.monotonic() - t0 < timeout_s:
                msg = self.next_episode_state(info["episode"], graph)
                if msg is not None:
                    last = msg
                    if msg.get("done"):
                        break
            else:
                raise GraphError(f"episode {info['episode']} ({task}, seed {seed}) did not finish within "
                                 f"{timeout_s:g} s wall time (last state {last})")
        finally:
            self._recording = False
            self.enable(False)
        with self._lock:
            timing = list(self._timing)
        commanded = [t for t in timing if t[2] > 0.5]
        return EpisodeRecord(
            task=task, instruction=info["instruction"], seed=int(seed), success=bool(last.get("success")),
            steps=int(last.get("step", 0)), tick_ms=[t[0] for t in commanded],
            image_to_command_ms=[t[1] for t in commanded if t[1] == t[1]], wall_s=time.monotonic() - t0,
            clamped=sum(t[3] > 0.5 for t in commanded),
        )

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()


def close_video(video) -> None:
    """Finish a VideoWriter; one that got no frame (the graph failed before the first image) leaves no file."""
    video.close()


def bundle_facts(bundle: str | Path) -> dict:
    """Control rate and image size from a bundle's gato.json (no ONNX loaded): what the graph must match."""
    meta = json.loads((Path(bundle) / "gato.json").read_text())
    size = meta.get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return {"control_rate_hz": float(meta.get("control_rate_hz") or 20.0), "image_size": int(size) if size else None,
            "meta": meta}


def graph_arguments(bundle: str | Path, execution_provider: str = "auto") -> dict[str, str]:
    """Launch arguments for eval and demo: sim + policy at the bundle's rate and image size; the sim waits for
    us between episodes and the policy waits for ~/enable."""
    facts = bundle_facts(bundle)
    # trigger:=image: the sim publishes one image per control tick, so the policy answers each observation once,
    # one tick's latency later, as in the ROS-free loop (a free-running timer adds up to a period, by phase).
    args = {"sim": "true", "model": str(Path(bundle).resolve()), "auto_reset": "false", "enable_on_start": "false",
            "execution_provider": execution_provider, "rate": str(facts["control_rate_hz"]), "trigger": "image"}
    if facts["image_size"]:
        args["image_size"] = str(facts["image_size"])
    return args


def episode_timeout(task: str, rate_hz: float) -> float:
    """Wall-clock bound for one episode: its step budget in real time, plus slack for a loaded machine."""
    from gato_ros.sim.tasks import get_task

    return 3.0 * get_task(task).max_steps / rate_hz + 20.0


def evaluate_ros(args) -> dict:
    """`gato-ros eval --ros`: same arguments and the same JSON as the ROS-free `gato_ros.evaluation.evaluate`."""
    from gato_ros.cli.collect import resolve_tasks
    from gato_ros.evaluation import percentiles, wilson_interval
    from gato_ros.ros.launcher import GraphProcesses

    import rclpy

    if args.policy in ("expert", "random"):
        raise SystemExit(f"--ros runs a model bundle in the policy node; --policy {args.policy} needs the sim's state "
                         "(use it without --ros)")
    bundle = Path(args.policy)
    if not (bundle / "gato.json").is_file():
        raise SystemExit(f"--policy {args.policy!r} is not a model bundle directory (no gato.json)")
    if getattr(args, "image_size", None):
        raise SystemExit("--image-size is not used with --ros: the sim renders the bundle's size from config/arm.yaml")
    for flag, value, default in (("--reach-distractors", getattr(args, "reach_distractors", "colour"), "colour"),
                                 ("--pick-place-layout", getattr(args, "pick_place_layout", "rows"), "rows")):
        if value != default:  # the sim node samples the default layouts only: refuse rather than evaluate others
            raise SystemExit(f"{flag} {value} is not supported with --ros yet: the sim node samples the default "
                             f"layouts ({flag} {default}); run it without --ros")
    tasks = resolve_tasks(args.task)
    rate = bundle_facts(bundle)["control_rate_hz"]
    bar = None
    if not getattr(args, "no_progress", False):
        from tqdm import tqdm

        bar = tqdm(total=args.episodes * len(tasks), unit="ep", desc="eval --ros", leave=False)
    records: list[EpisodeRecord] = []
    started = time.perf_counter()
    video, on_frame, filming = None, None, {"on": False}
    if getattr(args, "video", None):
        from gato_ros.sim.video import VideoWriter, annotate, upscale

        video = VideoWriter(args.video, fps=rate)

        def on_frame(rgb, ep):  # the first --video-episodes episodes of each task, as the ROS-free eval draws
            if filming["on"]:
                video.append(annotate(upscale(rgb, 256), ep.get("instruction", ""), success=ep.get("success"),
                                      step=ep.get("step")))
    rclpy.init()
    graph = GraphProcesses(graph_arguments(bundle, args.execution_provider), echo=False)
    client = None
    try:
        graph.start()
        client = GraphClient(on_frame=on_frame)
        client.wait_ready(graph)
        for task in tasks:
            for i in range(args.episodes):
                filming["on"] = video is not None and i < getattr(args, "video_episodes", 2)
                rec = client.run_episode(task, args.seed + i, episode_timeout(task, rate), graph)
                records.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task=task, success=f"{np.mean([r.success for r in records if r.task == task]):.2f}")
    except GraphError as exc:
        raise SystemExit(f"eval --ros: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        graph.close()
        rclpy.try_shutdown()
        if video is not None:
            close_video(video)
    wall = time.perf_counter() - started
    per_task = {}
    for task in tasks:
        rs = [r for r in records if r.task == task]
        k = sum(r.success for r in rs)
        lo, hi = wilson_interval(k, len(rs))
        ok_steps = [r.steps for r in rs if r.success]
        per_task[task] = {
            "episodes": len(rs), "success_rate": k / len(rs), "ci95": [lo, hi],
            "mean_steps": float(np.mean([r.steps for r in rs])), "successes": k,
            "mean_steps_success": float(np.mean(ok_steps)) if ok_steps else None,
            "seeds": [args.seed, args.seed + args.episodes - 1],
            # commands the node's safety filter changed; an episode with none is the direct eval's, action for action
            "clamped_commands": sum(r.clamped for r in rs),
            "episodes_clamped": sum(r.clamped > 0 for r in rs),
        }
    steps = sum(r.steps for r in records)
    return {
        "policy": str(args.policy),
        "tasks": per_task,
        "tick_ms": percentiles([t for r in records for t in r.tick_ms]),
        "image_to_command_ms": percentiles([t for r in records for t in r.image_to_command_ms]),
        "episodes": len(records),
        "steps": steps,
        "wall_s": wall,
        "env_steps_per_s": steps / wall if wall > 0 else None,
        "control_rate_hz": rate,
        "seed": args.seed,
        "transport": "ros2",
        **({"video": str(args.video)} if video is not None else {}),
    }
