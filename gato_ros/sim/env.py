"""`ArmEnv`: the UR5e + gripper table-top sim behind a Gymnasium-style API (no gymnasium or rclpy needed).

Spaces (the shared contract in DESIGN.md; joint order = `JOINT_NAMES`):

| key | dtype, shape | range | unit | ROS topic (sim node) |
|---|---|---|---|---|
| obs `image` | uint8 (H, W, 3) RGB, H = W = `image_size` (64) | 0..255 | - | /camera/image_raw |
| obs `joint_pos` | float64 (7,) | `joint_limits` | rad x6, m (gripper_joint) | /joint_states position |
| obs `joint_vel` | float64 (7,) | - | rad/s x6, m/s | /joint_states velocity |
| action | float64 (7,) absolute position targets | clipped to `joint_limits` | rad x6, m | /position_controller/commands |

One `step` = one control tick of 1/`control_rate_hz` s (50 ms): the targets go to MuJoCo position actuators
(UR5e gains, sim/arm.xml), physics runs `substeps` steps of `physics_timestep`, then the camera renders once.
`info` carries "instruction", "task", "success", "step" and "sim_time". An episode terminates on success and
truncates at the task's step budget (reach 60, pick_place 150).

Rendering: one `mujoco.Renderer` is created per env and reused; the scene is tuned for Mesa llvmpipe (see
sim/README.md). All randomness comes from the generator seeded in `reset(seed=...)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gato_ros.sim.backend import import_mujoco, sim_dir
from gato_ros.sim.kinematics import ARM_JOINTS
from gato_ros.sim.tasks import (
    COLOURS,
    PARK_X,
    PARK_Z,
    PICK_PLACE_LAYOUTS,
    POOL_SIZE,
    REACH_DISTRACTORS,
    TASKS,
    Layout,
    get_task,
)

mujoco = import_mujoco()

# The contract joint order: UR5e names plus the gripper opening.
JOINT_NAMES = ARM_JOINTS + ("gripper_joint",)
# Actuator driving each joint above (the gripper actuator drives the finger tendon, target in metres per finger).
ACTUATOR_NAMES = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper")
# Every robot joint, for /joint_states (the mimic finger is published too; consumers match by name).
ROBOT_JOINT_NAMES = JOINT_NAMES + ("gripper_right_joint",)
BOWL_GEOMS = ("base",) + tuple(f"rim{i}" for i in range(8))


@dataclass
class EnvConfig:
    """Configuration of `ArmEnv`; validated on construction."""

    image_size: int = 64  # camera image height = width (px); the bundle's image size
    control_rate_hz: float = 20.0  # control ticks per simulated second
    physics_timestep: float | None = None  # s; None: the largest <= the scene's 2 ms dividing the control period
    task: str | None = None  # task for reset() when options give none; None draws one per episode
    max_steps: int | None = None  # episode budget; None uses the task's (reach 60, pick_place 150)
    position_jitter: float = 0.015  # m, uniform offset of each object around its slot centre
    yaw_jitter: float = 0.3  # rad, uniform yaw of each object
    reach_distractors: str = "colour"  # "colour": colour word suffices; "attribute": colour and shape both needed
    pick_place_layout: str = "rows"  # "rows": cubes in the near row, bowls in the far row; "any": any slots
    terminate_on_success: bool = True
    camera: str = "camera"
    scene_path: str | None = None  # None: sim/scene.xml (see backend.sim_dir)
    extra: dict = field(default_factory=dict)  # free-form, recorded with datasets

    def __post_init__(self):
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be an int in 16..1024, got {self.image_size!r}")
        if not self.control_rate_hz > 0:
            raise ValueError(f"control_rate_hz must be > 0, got {self.control_rate_hz!r}")
        if self.physics_timestep is not None and not 0 < self.physics_timestep <= 1.0 / self.control_rate_hz:
            raise ValueError(
                f"physics_timestep must be in (0, {1.0 / self.control_rate_hz}] s (one control period), "
                f"got {self.physics_timestep!r}"
            )
        if self.task is not None:
            get_task(self.task)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps!r}")
        if not 0 <= self.position_jitter <= 0.05:
            raise ValueError(
                f"position_jitter must be in [0, 0.05] m (slots are 20 cm apart), got {self.position_jitter}"
            )
        if self.reach_distractors not in REACH_DISTRACTORS:
            raise ValueError(f"reach_distractors must be one of {REACH_DISTRACTORS}, got {self.reach_distractors!r}")
        if self.pick_place_layout not in PICK_PLACE_LAYOUTS:
            raise ValueError(f"pick_place_layout must be one of {PICK_PLACE_LAYOUTS}, got {self.pick_place_layout!r}")
        if not 0 <= self.yaw_jitter <= math.pi:
            raise ValueError(f"yaw_jitter must be in [0, pi] rad, got {self.yaw_jitter}")


class ArmEnv:
    """The table-top arm sim. See the module docstring for the observation and action spaces."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: EnvConfig | None = None):
        self.config = config or EnvConfig()
        path = Path(self.config.scene_path) if self.config.scene_path else sim_dir() / "scene.xml"
        self.model = mujoco.MjModel.from_xml_path(str(path))
        period = 1.0 / self.config.control_rate_hz
        if self.config.physics_timestep is not None:
            self.model.opt.timestep = self.config.physics_timestep
        else:
            # Keep the scene's timestep as an upper bound and shrink it so whole substeps fill one control period
            # (20 Hz: 25 x 2 ms; 30 Hz: 17 x 1.96 ms).
            self.model.opt.timestep = period / math.ceil(period / self.model.opt.timestep - 1e-9)
        self.substeps = int(round(period / self.model.opt.timestep))
        if abs(self.substeps * self.model.opt.timestep - period) > 1e-9:
            raise ValueError(
                f"physics_timestep {self.model.opt.timestep} s must divide the control period {period} s "
                f"(control_rate_hz={self.config.control_rate_hz})"
            )
        size = self.config.image_size
        # The offscreen buffer must hold the image (the scene's is 256x256; its size did not change render time).
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, size)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, size)
        self.data = mujoco.MjData(self.model)
        self._home = self.model.key("home").id
        self._actuators = np.array([self.model.actuator(n).id for n in ACTUATOR_NAMES])
        self._qadr = np.array([self.model.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._dadr = np.array([self.model.joint(n).dofadr[0] for n in JOINT_NAMES])
        self._robot_qadr = np.array([self.model.joint(n).qposadr[0] for n in ROBOT_JOINT_NAMES])
        self._robot_dadr = np.array([self.model.joint(n).dofadr[0] for n in ROBOT_JOINT_NAMES])
        self._ctrl_range = self.model.actuator_ctrlrange[self._actuators].copy()  # (7, 2)
        # Collision bits of the free pool objects as the scene defines them (parking turns them off).
        free = [f"{k}_{i}" for k, n in POOL_SIZE.items() if k != "bowl" for i in range(n)]
        self._contype = {b: int(self.model.geom(b).contype[0]) for b in free}
        self._conaffinity = {b: int(self.model.geom(b).conaffinity[0]) for b in free}
        self._renderer = None
        self._rng = np.random.default_rng()
        self.layout: Layout | None = None
        self.task = None
        self.seed: int | None = None
        self.step_count = 0
        self.success = False
        self._image = None

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def joint_names(self) -> list[str]:
        return list(JOINT_NAMES)

    @property
    def joint_limits(self) -> np.ndarray:
        """(7, 2) [lower, upper] per joint in `joint_names` order (rad, m): the actuator control ranges."""
        return self._ctrl_range.copy()

    @property
    def control_period(self) -> float:
        return 1.0 / self.config.control_rate_hz

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the episode's reset (drives /clock)."""
        return float(self.data.time)

    @property
    def instruction(self) -> str:
        return self.layout.instruction if self.layout else ""

    @property
    def max_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return self.task.max_steps if self.task else 0

    # ---------------------------------------------------------------------------------------------- episode API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode: home pose, a random layout for the task. Returns (observation, info).

        `options["task"]` picks the task (else `config.task`, else one drawn from the seed).
        """
        options = dict(options or {})
        unknown = set(options) - {"task"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; expected only 'task'")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.seed = seed
        name = options.get("task") or self.config.task
        if name is None:
            name = sorted(TASKS)[int(self._rng.integers(len(TASKS)))]
        self.task = get_task(name, self.config.reach_distractors, self.config.pick_place_layout)
        self.layout = self.task.sample(self._rng, self.config.position_jitter, self.config.yaw_jitter)

        m, d = self.model, self.data
        mujoco.mj_resetDataKeyframe(m, d, self._home)
        self._arrange(self.layout)
        mujoco.mj_forward(m, d)
        # Let objects settle onto the table (they start 0.1 mm above it) before the first observation.
        for _ in range(self.substeps):
            mujoco.mj_step(m, d)
        d.time = 0.0
        self.step_count = 0
        self.success = self.task.success(m, d, self.layout)
        self._image = self.render()
        return self.observation(), self._info()

    def step(self, action):
        """Apply absolute position targets for one control tick. Returns (obs, reward, terminated, truncated, info)."""
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (len(JOINT_NAMES),):
            raise ValueError(
                f"action must have shape ({len(JOINT_NAMES)},) = position targets for {list(JOINT_NAMES)}, "
                f"got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            bad = [JOINT_NAMES[i] for i in np.flatnonzero(~np.isfinite(a))]
            raise ValueError(f"action must be finite; non-finite targets for {bad}")
        # As on a real arm, targets beyond the joint limits are clipped to the actuator ranges.
        self.data.ctrl[self._actuators] = np.clip(a, self._ctrl_range[:, 0], self._ctrl_range[:, 1])
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self.step_count += 1
        self.success = self.task.success(self.model, self.data, self.layout)
        self._image = self.render()
        terminated = bool(self.success and self.config.terminate_on_success)
        truncated = bool(not terminated and self.step_count >= self.max_steps)
        return self.observation(), float(self.success), terminated, truncated, self._info()

    def observation(self) -> dict[str, np.ndarray]:
        """The contract observation of the current state (image rendered at the last reset/step)."""
        return {
            "image": self._image.copy(),
            "joint_pos": self.data.qpos[self._qadr].copy(),
            "joint_vel": self.data.qvel[self._dadr].copy(),
        }

    def outcome(self) -> str:
        """How the current episode stands (`Task.outcome`: "success", or where it went wrong)."""
        if self.layout is None:
            raise RuntimeError("outcome() before reset()")
        return self.task.outcome(self.model, self.data, self.layout)

    def _info(self) -> dict:
        return {
            "instruction": self.layout.instruction,
            "task": self.task.name,
            "success": bool(self.success),
            "step": self.step_count,
            "sim_time": self.sim_time,
            "seed": self.seed,
        }

    # --------------------------------------------------------------------------------------------- scene set-up
    def _arrange(self, layout: Layout) -> None:
        """Park every pool object, then place and colour the layout's objects (named queries only)."""
        m, d = self.model, self.data
        placed = {o.body: o for o in layout.objects}
        park = 0
        for kind, count in POOL_SIZE.items():
            for i in range(count):
                body = f"{kind}_{i}"
                o = placed.get(body)
                if kind == "bowl":
                    mocap = m.body(body).mocapid[0]
                    if o is None:
                        d.mocap_pos[mocap] = (PARK_X, 1.5 + 0.3 * i, -0.5)
                        d.mocap_quat[mocap] = (1, 0, 0, 0)
                    else:
                        d.mocap_pos[mocap] = (o.xy[0], o.xy[1], 0.0)
                        d.mocap_quat[mocap] = _yaw_quat(o.yaw)
                        for g in BOWL_GEOMS:
                            m.geom(f"{body}_{g}").rgba[:3] = COLOURS[o.colour]
                    continue
                qpos = d.joint(body).qpos
                d.joint(body).qvel[:] = 0.0
                # Parked objects float out of view with no contacts (gravity compensated): a third less physics
                # per tick than letting them rest on a shelf.
                geom = m.geom(body)
                geom.contype[:] = 0 if o is None else self._contype[body]
                geom.conaffinity[:] = 0 if o is None else self._conaffinity[body]
                m.body_gravcomp[m.body(body).id] = 1.0 if o is None else 0.0
                if o is None:
                    qpos[:] = (PARK_X, -1.6 + 0.25 * park, PARK_Z, 1, 0, 0, 0)
                    park += 1
                else:
                    z = _resting_height(m, body)
                    qpos[:3] = (o.xy[0], o.xy[1], z + 1e-4)
                    qpos[3:] = _yaw_quat(o.yaw)
                    m.geom(body).rgba[:3] = COLOURS[o.colour]

    # ---------------------------------------------------------------------------------------------- rendering
    def render(self) -> np.ndarray:
        """Render the scene camera now: uint8 (H, W, 3) RGB."""
        if self._renderer is None:
            size = self.config.image_size
            self._renderer = mujoco.Renderer(self.model, height=size, width=size)
        self._renderer.update_scene(self.data, camera=self.config.camera)
        return self._renderer.render()

    def render_video_frame(self, size: int = 256, overlay: bool = True) -> np.ndarray:
        """The policy's camera view, upscaled to `size` (nearest neighbour) with the instruction and success drawn."""
        from gato_ros.sim.video import annotate, upscale

        frame = upscale(self._image, size)
        if overlay:
            frame = annotate(frame, self.instruction, success=self.success, step=self.step_count)
        return frame

    def camera_intrinsics(self) -> dict:
        """Pinhole intrinsics of the scene camera at the env's image size (for sensor_msgs/CameraInfo).

        MuJoCo cameras are ideal pinholes with a vertical field of view `fovy` and square pixels:
        fy = fx = (H / 2) / tan(fovy / 2); the principal point is the image centre, (W - 1) / 2 and (H - 1) / 2 in
        the ROS convention where pixel (0, 0) is centred at coordinate 0.
        """
        size = self.config.image_size
        fovy = math.radians(float(self.model.camera(self.config.camera).fovy[0]))
        f = (size / 2.0) / math.tan(fovy / 2.0)
        cx = cy = (size - 1) / 2.0
        k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        p = np.hstack([k, np.zeros((3, 1))])
        return {"width": size, "height": size, "fx": f, "fy": f, "cx": cx, "cy": cy, "K": k, "P": p,
                "distortion_model": "plumb_bob", "D": np.zeros(5)}

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, positions, velocities) of every robot joint, for /joint_states (includes the mimic finger)."""
        return list(ROBOT_JOINT_NAMES), self.data.qpos[self._robot_qadr].copy(), self.data.qvel[self._robot_dadr].copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


def _resting_height(model, geom: str) -> float:
    """Centre height (m) of an upright pool object resting on the table."""
    size = model.geom(geom).size
    gtype = int(model.geom(geom).type[0])
    if gtype == mujoco.mjtGeom.mjGEOM_SPHERE:
        return float(size[0])
    if gtype == mujoco.mjtGeom.mjGEOM_CYLINDER:
        return float(size[1])
    return float(size[2])  # box half height
