"""`gato_sim`: the MuJoCo arm behind the topics a real arm driver speaks (console script `gato_sim_node`).

    /position_controller/commands (Float64MultiArray) ─┐                        ┌─> /joint_states (all joints)
    /arm_controller/joint_trajectory (JointTrajectory) ─┴─> latest target ─┐    ├─> /camera/image_raw (rgb8)
                                                                           ▼    ├─> /camera/camera_info
    ~/reset_episode (Trigger), parameters task/seed ──> sim thread: ArmEnv.step @ rate_hz (real time)
                                                                                ├─> /clock
                                                                                ├─> ~/instruction (transient local)
                                                                                ├─> ~/success (Bool)
                                                                                └─> ~/episode (String, JSON)

All MuJoCo work (reset, step, render) happens on one dedicated thread: the EGL context of the renderer belongs to
the thread that created it, and a loop with absolute deadlines keeps real time better than an executor timer.
ROS callbacks only hand targets and reset requests to that thread.

Commands: the latest Float64MultiArray (7 values in joint order) replaces the target; a JointTrajectory is
followed like a joint trajectory controller would, linearly interpolated in sim time from the target at arrival;
with no command the last target is held (at episode start: the home pose). Commands that arrive within
`reset_grace_s` after a reset were computed from the previous episode and are dropped. With `lockstep` the sim
steps only when a command has arrived since its last frame (for evaluations that must match the direct loop).

Episodes: `~/reset_episode` (or `auto_reset`) starts episode k with seed `seed + k` (k counts from the last time
`seed` was set) and the `task` parameter, or the tasks in rotation when it is empty. When an episode ends (success
or step budget) the sim pauses, still publishing its sensors, until the next reset. /clock never goes backwards:
sim time keeps counting across episodes.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from gato_ros.ros.conversions import encode_image
from gato_ros.ros.common import RateLimitedLog, StartupError, declare_config, run_node


@dataclass
class SimNodeConfig:
    """Parameters of the sim node. ROS parameters mirror these fields: same names, same defaults. task, seed,
    max_steps, auto_reset, reset_delay_s, reset_grace_s and lockstep may be changed at run time (they apply
    from the next episode); the others are read at start-up."""

    rate_hz: float = 20.0
    """Control rate: one env step (and one set of sensor messages) per period, in real time."""
    task: str = ""
    """Task of every episode (reach, pick_place); empty: the tasks in rotation."""
    seed: int = 0
    """Seed of the next episode; episode k after setting it uses seed + k."""
    image_size: int = 64
    """Camera image height = width in pixels."""
    max_steps: int = 0
    """Episode step budget; 0: the task's own (reach 60, pick_place 150)."""
    auto_reset: bool = False
    """Start the next episode by itself `reset_delay_s` after one ends."""
    reset_delay_s: float = 1.0
    reset_grace_s: float = 0.05
    """Commands arriving this soon after a reset were computed from the old episode and are dropped."""
    lockstep: bool = False
    """Step only when a command has arrived since the last frame went out (still at most rate_hz), so step k+1
    applies the action computed from observation k, as in the ROS-free eval loop, however slow the policy. Until
    then nothing is published, except the same frame again every keepalive_s. `eval --ros` and the demo use it."""
    keepalive_s: float = 0.5
    """lockstep: re-publish the current frame after this long without a command (a lost message must not stall)."""
    stamp_sim_time: bool = False
    """Stamp messages with sim time (the /clock value) instead of wall time; set with use_sim_time:=true."""
    camera_frame: str = "camera_optical_frame"

    def __post_init__(self) -> None:
        if not self.rate_hz > 0:
            raise StartupError(f"rate_hz must be > 0, got {self.rate_hz}")
        if self.max_steps < 0:
            raise StartupError(f"max_steps must be >= 0 (0: the task's budget), got {self.max_steps}")


class SimNode(Node):
    """See the module docstring. Construct after rclpy.init(); call `close()` (or destroy_node) to stop the thread."""

    def __init__(self, node_name: str = "gato_sim", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self.config = declare_config(self, SimNodeConfig)
        from gato_ros.sim.env import JOINT_NAMES  # mujoco is imported here, not when the module is imported
        from gato_ros.sim.tasks import TASKS, task_names

        self._task_names = sorted(TASKS)  # the rotation when `task` is empty
        self._known_tasks = task_names()  # what `task` may name (variants included)
        self.joint_names = list(JOINT_NAMES)  # command order; set before any command callback can run
        self._sim_clock = 0.0  # s of sim time since start, monotonic across episodes
        self._check_task(self.config.task)
        self._lock = threading.Lock()
        self._command: np.ndarray | None = None
        self._trajectory: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None  # arrival, mask, t, pos
        self._command_rx = 0.0
        self._reset_wall = 0.0
        self._frame_wall = 0.0  # time.monotonic() when the current frame was last published
        self._reset_request: threading.Event | None = None
        self._reset_reply: dict = {}
        self._episode_base = 0  # episodes since `seed` was last set
        self.episode = -1
        self.overruns = 0
        self._warn = RateLimitedLog(self.get_logger().warning)

        latched = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self._pub_joints = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self._pub_image = self.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self._pub_info = self.create_publisher(CameraInfo, "/camera/camera_info", qos_profile_sensor_data)
        self._pub_clock = self.create_publisher(Clock, "/clock", 10)
        self._pub_instruction = self.create_publisher(String, "~/instruction", latched)
        self._pub_success = self.create_publisher(Bool, "~/success", 10)
        self._pub_episode = self.create_publisher(String, "~/episode", 10)
        self.create_subscription(Float64MultiArray, "/position_controller/commands", self._on_array, 10)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory", self._on_trajectory, 10)
        self.create_service(Trigger, "~/reset_episode", self._srv_reset)
        self.add_on_set_parameters_callback(self._on_parameters)

        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gato_sim", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=120.0)
        if self._startup_error is not None:
            raise StartupError(f"the sim failed to start: {self._startup_error}") from self._startup_error
        self.get_logger().info(
            f"sim at {self.config.rate_hz:g} Hz, {self.config.image_size}px camera, tasks "
            f"{self.config.task or ' / '.join(self._task_names)}; first episode: {self.instruction!r}"
        )

    # ---- ROS side ------------------------------------------------------------------------------------------
    def _check_task(self, task: str) -> None:
        if task and task not in self._known_tasks:
            raise StartupError(f"unknown task {task!r}; set task to one of {self._known_tasks} or empty to rotate")

    def _on_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "task" and p.value and p.value not in self._known_tasks:
                return SetParametersResult(successful=False, reason=f"unknown task {p.value!r}; one of {self._known_tasks}")
        for p in params:
            if p.name in ("task", "seed", "auto_reset", "reset_delay_s", "max_steps", "lockstep", "keepalive_s",
                          "reset_grace_s"):
                setattr(self.config, p.name, p.value)
            if p.name == "seed":
                with self._lock:
                    self._episode_base = 0
        return SetParametersResult(successful=True)

    def _on_array(self, msg: Float64MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (len(self.joint_names),) or not np.all(np.isfinite(values)):
            self._warn(
                f"/position_controller/commands needs {len(self.joint_names)} finite values in the order "
                f"{self.joint_names}; got {values.size} values, {int(np.sum(~np.isfinite(values)))} non-finite; ignored"
            )
            return
        with self._lock:
            self._command, self._trajectory, self._command_rx = values, None, time.monotonic()

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        where = {n: i for i, n in enumerate(self.joint_names)}
        unknown = [n for n in msg.joint_names if n not in where]
        if unknown or not msg.points:
            self._warn(f"/arm_controller/joint_trajectory: unknown joints {unknown} or no points; ignored "
                       f"(joints are {self.joint_names})")
            return
        cols = np.array([where[n] for n in msg.joint_names])
        times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
        try:
            pos = np.array([list(p.positions) for p in msg.points], dtype=np.float64)
        except ValueError:
            pos = np.zeros((0,))
        if pos.shape != (len(msg.points), len(cols)) or not np.all(np.isfinite(pos)) or np.any(np.diff(times) <= 0):
            self._warn("/arm_controller/joint_trajectory: points need one finite position per joint and increasing "
                       "time_from_start; ignored")
            return
        with self._lock:
            self._trajectory = (self._sim_clock, cols, times, pos)
            self._command_rx = time.monotonic()

    def _srv_reset(self, request, response):
        done = threading.Event()
        with self._lock:
            self._reset_request = done
        if not done.wait(timeout=30.0):
            response.success, response.message = False, "the sim thread did not answer within 30 s"
            return response
        response.success, response.message = True, json.dumps(self._reset_reply)
        return response

    @property
    def instruction(self) -> str:
        return self._reset_reply.get("instruction", "")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()

    # ---- the sim thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            from gato_ros.sim.env import ArmEnv, EnvConfig

            cfg = self.config
            self.env = ArmEnv(EnvConfig(image_size=int(cfg.image_size), control_rate_hz=float(cfg.rate_hz)))
            if self.env.joint_names != self.joint_names:
                raise RuntimeError(f"the env's joints {self.env.joint_names} differ from {self.joint_names}")
            self._camera_info = self._make_camera_info()
            self._reset()
        except BaseException as exc:  # reported by the constructor
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        period = 1.0 / float(self.config.rate_hz)
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # keep the sim alive; a failing step is reported, not fatal
                self._warn(f"sim step failed: {type(exc).__name__}: {exc}")
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # more than a period behind: do not try to catch up with a burst of steps
                self.overruns += 1
                next_t = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)
        self.env.close()

    def _tick(self) -> None:
        with self._lock:
            request, self._reset_request = self._reset_request, None
        if request is not None:
            self._reset()
            request.set()
            return
        if self._done:
            if self.config.auto_reset and time.monotonic() - self._done_wall >= self.config.reset_delay_s:
                self._reset()
            else:
                self._publish_state()
            return
        if self.config.lockstep and not self._command_since_frame():
            if time.monotonic() - self._frame_wall >= self.config.keepalive_s:
                self._publish_state()
            return
        _, _, terminated, truncated, info = self.env.step(self._target_for_step())
        self._sim_clock += self.env.control_period
        self._info = info
        if terminated or truncated:
            self._done, self._done_wall = True, time.monotonic()
            self.get_logger().info(
                f"episode {self.episode} ({info['task']}, seed {info['seed']}) "
                f"{'succeeded' if info['success'] else 'ran out of steps'} after {info['step']} steps"
            )
        self._publish_state()

    def _reset(self) -> None:
        cfg = self.config
        with self._lock:
            k = self._episode_base
            self._episode_base += 1
            self._command, self._trajectory = None, None
            self._reset_wall = time.monotonic()
        self.episode += 1
        task = cfg.task or self._task_names[self.episode % len(self._task_names)]
        seed = int(cfg.seed) + k
        self.env.config.max_steps = int(cfg.max_steps) or None
        obs, info = self.env.reset(seed=seed, options={"task": task})
        self._target = obs["joint_pos"].copy()  # hold the home pose until a command arrives
        self._info, self._done, self._done_wall = info, False, 0.0
        self._reset_reply = {"episode": self.episode, "task": task, "seed": seed, "instruction": info["instruction"]}
        # Instruction first, then the new sensors: the policy node waits for sensors newer than the instruction.
        self._pub_instruction.publish(String(data=info["instruction"]))
        self._publish_state()

    def _command_since_frame(self) -> bool:
        """lockstep: has a usable command arrived after the current frame was published?"""
        with self._lock:
            have = self._command is not None or self._trajectory is not None
            rx = self._command_rx
        return have and rx >= self._reset_wall + self.config.reset_grace_s and rx > self._frame_wall

    def _target_for_step(self) -> np.ndarray:
        """Position targets for the coming step from the latest command (or the held target)."""
        with self._lock:
            command, trajectory, rx = self._command, self._trajectory, self._command_rx
        if rx < self._reset_wall + self.config.reset_grace_s:
            return self._target
        if trajectory is not None:
            arrival, cols, times, pos = trajectory
            t = self._sim_clock + self.env.control_period - arrival  # where the trajectory should be after this step
            start = self._target[cols]
            if t >= times[-1]:
                sample = pos[-1]
            else:
                knots_t = np.concatenate([[0.0], times])
                knots = np.vstack([start, pos])
                sample = np.array([np.interp(t, knots_t, knots[:, j]) for j in range(len(cols))])
            target = self._target.copy()
            target[cols] = sample
            if t >= times[-1]:
                with self._lock:  # finished: hold its last point, stop interpolating from a moving start
                    if self._trajectory is trajectory:
                        self._trajectory = None
                        self._command = target
            self._target = target
        elif command is not None:
            self._target = command.copy()
        return self._target

    # ---- publishing (sim thread) ---------------------------------------------------------------------------
    def _stamp(self):
        if self.config.stamp_sim_time:
            from builtin_interfaces.msg import Time

            sec = int(self._sim_clock)
            return Time(sec=sec, nanosec=int(round((self._sim_clock - sec) * 1e9)) % 1_000_000_000)
        return self.get_clock().now().to_msg()

    def _publish_state(self) -> None:
        stamp = self._stamp()
        clock = Clock()
        sec = int(self._sim_clock)
        clock.clock.sec, clock.clock.nanosec = sec, int(round((self._sim_clock - sec) * 1e9)) % 1_000_000_000
        self._pub_clock.publish(clock)

        names, pos, vel = self.env.joint_state()
        js = JointState()
        js.header.stamp = stamp
        js.name, js.position, js.velocity = names, pos.tolist(), vel.tolist()
        self._pub_joints.publish(js)

        img = encode_image(self.env.observation()["image"], "rgb8")
        img.header.stamp, img.header.frame_id = stamp, self.config.camera_frame
        self._pub_image.publish(img)
        self._camera_info.header.stamp = stamp
        self._pub_info.publish(self._camera_info)

        info = self._info
        self._pub_success.publish(Bool(data=bool(info["success"])))
        self._pub_episode.publish(String(data=json.dumps({
            "episode": self.episode, "task": info["task"], "seed": info["seed"], "instruction": info["instruction"],
            "step": int(info["step"]), "success": bool(info["success"]), "done": self._done,
            "sim_time": round(self._sim_clock, 6),
        })))
        self._frame_wall = time.monotonic()

    def _make_camera_info(self) -> CameraInfo:
        k = self.env.camera_intrinsics()
        info = CameraInfo()
        info.header.frame_id = self.config.camera_frame
        info.width, info.height = int(k["width"]), int(k["height"])
        info.distortion_model = k["distortion_model"]
        info.d = [float(x) for x in k["D"]]
        info.k = [float(x) for x in np.asarray(k["K"]).reshape(-1)]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [float(x) for x in np.asarray(k["P"]).reshape(-1)]
        return info


def main(args: list[str] | None = None) -> int:
    """Console script `gato_sim_node`."""
    return run_node(SimNode, "gato_sim", args, large_frames=True)  # image_size may make frames of any size


if __name__ == "__main__":
    sys.exit(main())
