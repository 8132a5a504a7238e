"""The scripted expert driving the sim node over ROS 2 while the recorder records: demonstrations as a user would
record them on a robot (issue 7), with the expert in the place of a teleoperator.

    gato_sim (lockstep) ──/joint_states, ~/episode──> ExpertDriver ──/position_controller/commands──> gato_sim
         ▲                                                    │  ▲
         └──── set_parameters (task, seed), ~/reset_episode ──┤  └─ shadow ArmEnv (same task + seed, not stepped)
                                                              │
    gato_recorder <── ~/start_episode, ~/end_episode ─────────┘     all topics ──> rosbag2 (MCAP)

Per episode: open a recorder episode, reset the sim to (task, seed), then answer every frame the sim publishes with
one command until the sim reports the episode done, then close the recorder episode with the sim's success flag.
The sim runs in `lockstep` (it steps only after a command has answered its last frame, at most at its rate), so
command k is computed from observation k as in `gato-ros collect`, however loaded the machine is.

The expert reads privileged state that ROS does not carry (where the objects are). An episode's layout is a pure
function of (task, seed) (gato_ros.sim.tasks), so the driver keeps a *shadow* env reset with the task and seed the
sim reports, checks that both give the same instruction, and lets the expert plan its waypoints over the shadow's
objects. The arm's state comes only from /joint_states. Objects the arm moves (pick_place's cube once grasped)
stay where they started in the shadow, which is where the expert's lift waypoint is computed anyway.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from gato_ros.ros.eval_ros import GraphClient, GraphError, episode_timeout

RECORDED_TOPICS = ("/camera/image_raw", "/joint_states", "/position_controller/commands", "/gato_sim/instruction",
                   "/gato_sim/success")


@dataclass
class DrivenEpisode:
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    wall_s: float
    sent: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (joint_pos, command) per step


class ExpertDriver:
    """A node in this process that drives a running sim (+ recorder) graph with the scripted expert.

    rclpy must be initialised by the caller. `noise` and `seed` go to the ScriptedExpert (executed-action noise).
    """

    def __init__(self, sim_node: str = "gato_sim", recorder_node: str | None = "gato_recorder", noise: float = 0.0,
                 seed: int = 0, rate_hz: float = 20.0):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import SetBool, Trigger

        from gato_ros.ros.conversions import JointStateMatcher
        from gato_ros.sim import ArmEnv, EnvConfig, ScriptedExpert

        self.client = GraphClient(sim_node=sim_node)  # sim parameters, resets and the episode stream
        self.recorder_node = recorder_node
        self.rate_hz = float(rate_hz)
        # The shadow env never renders an image anyone uses: the smallest size keeps its one render per reset cheap.
        self.env = ArmEnv(EnvConfig(image_size=16, control_rate_hz=self.rate_hz))
        self.expert = ScriptedExpert(self.env, noise=noise, seed=seed)
        self.matcher = JointStateMatcher(self.env.joint_names)
        self._lock = threading.Lock()
        self._joints: tuple[float, object] | None = None  # (arrival, msg)
        n = self.client.node
        n.create_subscription(JointState, "/joint_states", self._on_joints, qos_profile_sensor_data)
        self._cmd_pub = n.create_publisher(Float64MultiArray, "/position_controller/commands", 10)
        self._cmd_type = Float64MultiArray
        self._start = self._end = None
        if recorder_node:
            self._start = n.create_client(Trigger, f"/{recorder_node}/start_episode")
            self._end = n.create_client(SetBool, f"/{recorder_node}/end_episode")
        self._srv_types = (Trigger, SetBool)

    def _on_joints(self, msg) -> None:
        with self._lock:
            self._joints = (time.monotonic(), msg)

    # ---- start-up ------------------------------------------------------------------------------------------
    def wait_ready(self, graph=None, timeout: float = 90.0) -> None:
        """Wait for the sim's episode stream and reset service and, when recording, for the recorder to subscribe
        to every topic a dataset needs and for our command publisher to reach both nodes."""
        deadline = time.monotonic() + timeout
        node = self.client.node
        while time.monotonic() < deadline:
            if graph is not None and graph.exited():
                name, rc = next(iter(graph.exited().items()))
                raise GraphError(f"{name} exited with code {rc} during start-up:\n{graph.tail(name)}")
            missing = self._not_ready(node)
            if not missing:
                return
            time.sleep(0.1)
        raise GraphError(f"the sim/recorder graph did not come up within {timeout:g} s: still waiting for {missing}")

    def _not_ready(self, node) -> list[str]:
        missing = []
        if not self.client._episode_event.is_set():
            missing.append("/gato_sim/episode")
        if not self.client.reset_client.service_is_ready():
            missing.append("/gato_sim/reset_episode")
        if self.recorder_node:
            for srv in (self._start, self._end):
                if not srv.service_is_ready():
                    missing.append(srv.srv_name)
            for topic in RECORDED_TOPICS:
                subs = [i.node_name for i in node.get_subscriptions_info_by_topic(topic)]
                if self.recorder_node not in subs:
                    missing.append(f"{self.recorder_node} subscribed to {topic}")
        if self._cmd_pub.get_subscription_count() < (2 if self.recorder_node else 1):
            missing.append("subscribers of /position_controller/commands")
        return missing

    # ---- episodes ------------------------------------------------------------------------------------------
    def run_episode(self, task: str, seed: int, graph=None) -> DrivenEpisode:
        """One recorded expert episode through the graph (see the module docstring)."""
        client = self.client
        client.set_sim(task=task, seed=int(seed), lockstep=True, reset_grace_s=0.0)
        if self._start is not None:
            res = client._call(self._start, self._srv_types[0].Request())
            if not res.success:
                raise GraphError(f"{self._start.srv_name}: {res.message}")
        t0 = time.monotonic()
        info = client.reset_episode()
        start_obs, env_info = self.env.reset(seed=int(info["seed"]), options={"task": info["task"]})
        if env_info["instruction"] != info["instruction"]:
            raise GraphError(f"the sim's episode ({info}) and the expert's shadow env ({env_info['instruction']!r}) "
                             "disagree: are they running the same gato_ros version?")
        self.expert.reset()
        self.expert.set_instruction(info["instruction"])
        timeout = episode_timeout(task, self.rate_hz)
        answered, command, last_sent, last = -1, None, t0, {}
        sent: list[tuple[np.ndarray, np.ndarray]] = []
        while True:
            if time.monotonic() - t0 > timeout:
                raise GraphError(f"episode {info['episode']} ({task}, seed {seed}) did not finish within "
                                 f"{timeout:g} s wall time (last state {last})")
            msg = client.next_episode_state(info["episode"], graph)
            if msg is None:
                continue
            last = msg
            if msg.get("done"):
                break
            step = int(msg["step"])
            if step == answered and command is not None:
                self._publish(command)  # a re-sent frame (lockstep keepalive): our command was lost or early
                continue
            if step < answered:
                continue
            # Frame 0 must not be answered with a /joint_states of the previous episode (the paused sim repeats its
            # last frame until the reset): it is the one that equals the shadow env's start (same seed, same
            # deterministic reset). Later frames are published only after our previous command arrived.
            q, qd = self._joints_after(last_sent, start_obs["joint_pos"] if answered < 0 else None)
            command = np.asarray(self.expert.act({"joint_pos": q, "joint_vel": qd}), dtype=np.float64)
            self._publish(command)
            last_sent = time.monotonic()
            answered = step
            sent.append((q, command))
        success = bool(last.get("success"))
        if self._end is not None:
            req = self._srv_types[1].Request()
            req.data = success
            res = client._call(self._end, req)
            if not res.success:
                raise GraphError(f"{self._end.srv_name}: {res.message}")
        return DrivenEpisode(task=task, seed=int(info["seed"]), instruction=info["instruction"], success=success,
                             steps=int(last.get("step", 0)), wall_s=time.monotonic() - t0, sent=sent)

    def _joints_after(self, since: float, expect: np.ndarray | None = None,
                      timeout: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """The latest /joint_states received after `since` (and equal to `expect` when given), as (positions,
        velocities) in the expert's joint order."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                joints = self._joints
            if joints is not None and joints[0] > since:
                q, qd = self.matcher.match(joints[1])
                if expect is None or np.allclose(q, expect, rtol=0.0, atol=1e-9):
                    return q, qd
            if time.monotonic() > deadline:
                waiting = f" (waiting for the start pose {np.round(expect, 4)})" if expect is not None else ""
                raise GraphError(f"no /joint_states of the sim's frame within {timeout:g} s{waiting}")
            time.sleep(0.001)

    def _publish(self, command: np.ndarray) -> None:
        self._cmd_pub.publish(self._cmd_type(data=[float(x) for x in command]))

    def close(self) -> None:
        self.client.close()
        self.env.close()


def recording_graph(bag: str, rate_hz: float = 20.0, image_size: int = 64, log_dir=None):
    """The sim and the recorder of arm.launch.py's graph (record:=true), without the policy node: the expert
    commands instead. Not started yet."""
    from gato_ros.ros.launcher import GraphProcesses

    args = {"sim": "true", "record": "true", "bag": str(bag), "auto_reset": "false", "rate": str(float(rate_hz)),
            "image_size": str(int(image_size))}
    graph = GraphProcesses(args, echo=False, log_dir=log_dir)
    graph.specs = [s for s in graph.specs if s.name != "gato_policy"]
    return graph


def record_demonstrations(bag: str, task: str, episodes: int, seed: int, rate_hz: float = 20.0, image_size: int = 64,
                          noise: float = 0.0, progress: bool = True, log_dir=None
                          ) -> tuple[dict, list[DrivenEpisode]]:
    """Record `episodes` expert episodes of `task` (sim seeds seed, seed+1, ...) into the rosbag2 `bag`.

    Starts the sim and recorder processes, drives them, stops them with SIGINT (the recorder then closes the bag:
    metadata.yaml, MCAP summary). Returns a JSON-ready summary and the episodes (with the commands sent).
    """
    import rclpy

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, unit="ep", desc=f"record {task} via ROS", leave=False)
    rclpy.init()
    graph = recording_graph(bag, rate_hz, image_size, log_dir)
    driver = None
    records: list[DrivenEpisode] = []
    t0 = time.perf_counter()
    try:
        graph.start()
        driver = ExpertDriver(noise=noise, seed=seed, rate_hz=rate_hz)
        driver.wait_ready(graph)
        for i in range(episodes):
            records.append(driver.run_episode(task, seed + i, graph))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r.success for r in records]):.2f}")
    finally:
        if bar is not None:
            bar.close()
        if driver is not None:
            driver.close()
        codes = graph.stop()
        graph.close()
        rclpy.try_shutdown()
    if codes.get("gato_recorder") not in (0, None, -signal.SIGINT):
        raise GraphError(f"the recorder exited with code {codes['gato_recorder']}; the bag may be incomplete")
    summary = {
        "bag": str(bag),
        "task": task,
        "episodes": len(records),
        "seeds": [seed, seed + episodes - 1],
        "expert_success_rate": float(np.mean([r.success for r in records])),
        "steps": int(sum(r.steps for r in records)),
        "wall_s": time.perf_counter() - t0,
        "per_episode": [{"seed": r.seed, "instruction": r.instruction, "success": r.success, "steps": r.steps,
                         "wall_s": round(r.wall_s, 3)} for r in records],
    }
    return summary, records
