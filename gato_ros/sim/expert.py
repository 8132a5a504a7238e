"""Scripted expert and random policy for the sim tasks (both follow the Policy protocol).

The expert is a function of the simulator state: at each phase it reads object poses from the env, solves inverse
kinematics for a top-down tool pose (gato_ros.sim.kinematics), and moves the joint targets toward the solution in
a straight line in joint space at a bounded step per tick (all joints arrive together). The same phases run in
the same order every episode, so a small model can imitate it:

| task | phases (tool z = down, fixed yaw) |
|---|---|
| reach | approach (tool 14 cm above the table over the target) -> descend (7.5 cm) -> hold |
| point_above | approach (tool 20 cm above the table over the target) -> hold (until the arm is still) |
| pick_place | approach (12.5 cm over the cube) -> descend (2 cm) -> close -> lift (16 cm) -> carry (over the bowl) -> lower (9 cm) -> open -> retreat (20 cm) -> hold |

Waypoint heights are fixed (not per shape), so the joint targets depend only on where the objects are.

Optional Gaussian action noise (`noise`, rad on the arm joints; metres x 0.1 on the gripper) perturbs the executed
action for data diversity, while `clean_action` keeps the noiseless target for use as the training label (the
DART recipe: Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gato_ros.sim.kinematics import ArmIK
from gato_ros.sim.tasks import POINT_ABOVE_HEIGHT

GRIPPER_OPEN = 0.0425  # m per finger (2F-85 stroke / 2)
GRIPPER_CLOSED = 0.0
REACH_APPROACH_Z = 0.14  # m, tool centre height above the table while approaching a reach target
REACH_Z = 0.075  # m, final tool centre height for reach


@dataclass
class _Phase:
    name: str
    kind: str  # "move": drive the arm to a tool position; "grip": drive the gripper only; "hold": stay
    gripper: float  # gripper target during the phase (m)
    target: object = None  # callable(env) -> tool position (3,) for "move"
    tol: float = 0.02  # rad: measured joints within tol of the target ends a move phase
    timeout: int = 40  # ticks after which the phase ends regardless (never deadlocks the episode)


class ScriptedExpert:
    """Phase-scripted expert over an `ArmEnv` (reads privileged state: object poses)."""

    def __init__(self, env, noise: float = 0.0, max_joint_step: float = 0.06, max_gripper_step: float = 0.01,
                 seed: int | None = None):
        if noise < 0:
            raise ValueError(f"noise must be >= 0 (std of the action noise, rad), got {noise}")
        if not 0 < max_joint_step <= 0.5:
            raise ValueError(f"max_joint_step must be in (0, 0.5] rad per tick, got {max_joint_step}")
        self.env = env
        self.noise = float(noise)
        self.max_joint_step = float(max_joint_step)
        self.max_gripper_step = float(max_gripper_step)
        self._rng = np.random.default_rng(seed)
        self._ik = ArmIK(env.model)
        # Tool orientation used throughout: the home pose's (z down, fingers closing along world y).
        home = np.array(env.model.key("home").qpos[:6])
        _, self._rot = self._ik.forward(home)
        self.instruction = ""
        self.clean_action: np.ndarray | None = None
        self.reset()

    # ---------------------------------------------------------------------------------------------- protocol
    def reset(self) -> None:
        self._phases: list[_Phase] | None = None
        self._index = 0
        self._ticks = 0
        self._cmd: np.ndarray | None = None
        self._target_q: np.ndarray | None = None
        self.clean_action = None

    def set_instruction(self, text: str) -> None:
        """Recorded for completeness; the expert reads the task from the env's layout (privileged)."""
        self.instruction = text

    @property
    def phase(self) -> str:
        return self._phases[self._index].name if self._phases else ""

    def act(self, observation: dict) -> np.ndarray:
        """Next absolute joint targets (7,); `clean_action` holds the same action without noise."""
        q = np.asarray(observation["joint_pos"], dtype=np.float64)
        if self._phases is None:
            self._phases = self._plan(self.env.layout)
            self._cmd = q.copy()
            self._cmd[6] = GRIPPER_OPEN if q[6] > 0.5 * GRIPPER_OPEN else q[6]
        if self._phase_done(q, np.asarray(observation["joint_vel"])):
            self._advance()
        phase = self._phases[self._index]
        if phase.kind == "move":
            if self._target_q is None:
                self._target_q = self._solve(phase.target(self.env))
            delta = self._target_q - self._cmd[:6]
            biggest = np.max(np.abs(delta))
            scale = 1.0 if biggest <= self.max_joint_step else self.max_joint_step / biggest
            self._cmd[:6] += delta * scale
        g = np.clip(phase.gripper - self._cmd[6], -self.max_gripper_step, self.max_gripper_step)
        self._cmd[6] += g
        self._ticks += 1
        self.clean_action = self._cmd.copy()
        action = self._cmd.copy()
        if self.noise > 0:
            action[:6] += self._rng.normal(0.0, self.noise, 6)
            action[6] += self._rng.normal(0.0, 0.1 * self.noise)
        return action

    # ------------------------------------------------------------------------------------------------ phases
    def _phase_done(self, q: np.ndarray, qd: np.ndarray) -> bool:
        phase = self._phases[self._index]
        if phase.kind == "hold":
            return False
        if self._ticks >= phase.timeout:
            return True
        gripper_there = abs(self._cmd[6] - phase.gripper) < 1e-9
        if phase.kind == "move":
            if self._target_q is None or not gripper_there:
                return False
            arrived = np.max(np.abs(self._cmd[:6] - self._target_q)) < 1e-9
            # Executed-action noise jitters the measured joints around the target: widen the tolerance with it.
            return bool(arrived and np.max(np.abs(q[:6] - self._target_q)) < phase.tol + 3.0 * self.noise)
        # grip: the command has reached its end and the fingers have stopped (closed on the cube, or open).
        return bool(gripper_there and self._ticks >= 3 and abs(qd[6]) < 0.01)

    def _advance(self) -> None:
        self._index = min(self._index + 1, len(self._phases) - 1)
        self._ticks = 0
        self._target_q = None

    def _solve(self, tool_pos: np.ndarray) -> np.ndarray:
        q, residual = self._ik.solve(tool_pos, self._rot, self._cmd[:6])
        if residual > 0.005:
            raise RuntimeError(
                f"expert IK cannot reach tool position {np.round(tool_pos, 3)} (residual {residual:.3f} m)"
            )
        return q

    def _plan(self, layout) -> list[_Phase]:
        if layout is None:
            raise RuntimeError("reset the env before asking the expert to act")
        target = layout.target

        def at_height(body: str, z: float):
            """Tool position over the body's current centre, at a fixed height z (m above the table)."""

            def f(env):
                p = env.data.body(body).xpos.copy()
                p[2] = z
                return p

            return f

        if layout.task == "reach":
            # Fixed heights for every shape, so the final pose depends only on where the target is: 75 mm is
            # 25 mm over a cube, 19 mm over a ball and between the open fingers for the 90 mm cylinder.
            return [
                _Phase("approach", "move", GRIPPER_OPEN, at_height(target, REACH_APPROACH_Z), tol=0.05),
                _Phase("descend", "move", GRIPPER_OPEN, at_height(target, REACH_Z), tol=0.01),
                _Phase("hold", "hold", GRIPPER_OPEN),
            ]
        if layout.task == "point_above":
            # One move straight to the hover pose, then hold: success needs the arm to have stopped there.
            return [
                _Phase("approach", "move", GRIPPER_OPEN, at_height(target, POINT_ABOVE_HEIGHT), tol=0.01),
                _Phase("hold", "hold", GRIPPER_OPEN),
            ]
        if layout.task == "pick_place":
            bowl = layout.receptacle
            return [
                _Phase("approach", "move", GRIPPER_OPEN, at_height(target, 0.125), tol=0.05),
                # Tool centre 5 mm below the cube centre: the pads cover the cube's lower two thirds.
                _Phase("descend", "move", GRIPPER_OPEN, at_height(target, 0.02), tol=0.01),
                _Phase("close", "grip", GRIPPER_CLOSED, timeout=12),
                _Phase("lift", "move", GRIPPER_CLOSED, at_height(target, 0.16), tol=0.05),
                _Phase("carry", "move", GRIPPER_CLOSED, at_height(bowl, 0.16), tol=0.05),
                _Phase("lower", "move", GRIPPER_CLOSED, at_height(bowl, 0.09), tol=0.02),
                _Phase("open", "grip", GRIPPER_OPEN, timeout=10),
                _Phase("retreat", "move", GRIPPER_OPEN, at_height(bowl, 0.2), tol=0.05),
                _Phase("hold", "hold", GRIPPER_OPEN),
            ]
        raise ValueError(f"the scripted expert has no plan for task {layout.task!r}")


class RandomPolicy:
    """The floor: a random walk of joint targets inside the joint limits, with a random gripper.

    Each tick moves every arm target by N(0, step) rad from the previous target (starting at the measured joints),
    clipped to the limits; the gripper target is redrawn uniformly in its range with probability 0.1 per tick.
    Uniform targets over the full +-2 pi UR5e range would just slam the arm around; a walk at the expert's speed is
    the fairer floor.
    """

    def __init__(self, joint_limits: np.ndarray, step: float = 0.06, seed: int | None = None):
        self.limits = np.asarray(joint_limits, dtype=np.float64)
        if self.limits.shape != (7, 2):
            raise ValueError(f"joint_limits must have shape (7, 2), got {self.limits.shape}")
        self.step = float(step)
        self._rng = np.random.default_rng(seed)
        self._cmd: np.ndarray | None = None

    def reset(self) -> None:
        self._cmd = None

    def set_instruction(self, text: str) -> None:
        pass  # a random policy ignores language by definition

    def act(self, observation: dict) -> np.ndarray:
        if self._cmd is None:
            self._cmd = np.asarray(observation["joint_pos"], dtype=np.float64).copy()
        self._cmd[:6] += self._rng.normal(0.0, self.step, 6)
        if self._rng.random() < 0.1:
            self._cmd[6] = self._rng.uniform(*self.limits[6])
        self._cmd = np.clip(self._cmd, self.limits[:, 0], self.limits[:, 1])
        return self._cmd.copy()
