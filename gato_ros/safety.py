"""Safety filter between the policy and the arm: pure numpy, no ROS, no torch.

Every action the model proposes passes through `SafetyFilter.step` before it can become a command. The filter
guarantees, for every command it lets through (checked by a hypothesis property test):

1. it is finite and inside the joint limits (`lower <= cmd <= upper`);
2. it differs from the reference by at most `max_step` per joint, where the reference is the previous command,
   or the measured joint positions (clamped into the limits) when a new command sequence starts, i.e. after the
   filter was (re-)enabled.

Otherwise it *holds*: it returns no command, so the controller keeps its last target (a ros2_control position or
trajectory controller holds the last setpoint), and it says why. It holds when

- disabled: it starts disabled unless `enable_on_start` (a real arm does not move until someone enables it);
- the e-stop is latched: `estop()` holds at once and keeps holding until `reset_estop()` **and** `enable()`,
  so a released button alone never restarts motion (the latch semantics of industrial safety controllers);
- the caller reports a hold reason (stale image or joint state, a conversion or inference error);
- the proposed action or the measured joint positions contain NaN/inf, or have the wrong shape.

Why hold rather than command the measured position: on a real arm the measured position lags the target, and
commanding it would make the arm sag under gravity or jerk; keeping the last target is what the controllers do
when their command stream stops.

Why the first command of a sequence starts from the measured position and not the last command: between a disable
and an enable the arm may have been moved (freedrive, another controller), so the last command can be far from
where the arm is.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class SafetyConfig:
    """Joint limits and per-tick step limits, one entry per commanded joint (in command order)."""

    lower: np.ndarray
    """(n,) lower position limits (rad, or m for prismatic joints)."""
    upper: np.ndarray
    """(n,) upper position limits."""
    max_step: np.ndarray
    """(n,) largest change of a joint's command from one tick to the next (rad or m per tick)."""
    enable_on_start: bool = False
    """Start enabled. Off by default: a real arm must not move before an operator enables it."""

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        self.max_step = np.broadcast_to(np.asarray(self.max_step, dtype=np.float64), self.lower.shape).copy()
        if self.lower.shape != self.upper.shape:
            raise ValueError(f"lower has {self.lower.size} joints but upper has {self.upper.size}; give one pair per joint")
        arrays = {"lower": self.lower, "upper": self.upper, "max_step": self.max_step}
        for name, arr in arrays.items():
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"safety {name} must be finite, got {arr.tolist()}")
        if np.any(self.lower > self.upper):
            bad = np.flatnonzero(self.lower > self.upper).tolist()
            raise ValueError(f"joint limits with lower > upper at indices {bad}; check the bundle's joint_limits")
        if np.any(self.max_step <= 0):
            raise ValueError(f"max_step must be > 0 for every joint, got {self.max_step.tolist()}")

    @property
    def num_joints(self) -> int:
        return int(self.lower.size)


@dataclass
class SafetyDecision:
    """What the filter decided for one tick: a command to publish, or a hold with its reason."""

    command: np.ndarray | None
    reason: str = ""
    clamped: bool = False
    """True when the command differs from the proposed action (limits or step limit were applied)."""
    reference: np.ndarray | None = None
    """With a command: what its step limit was measured from (the previous command, or the clamped measured
    position at the start of a sequence)."""

    @property
    def holding(self) -> bool:
        return self.command is None


@dataclass
class SafetyFilter:
    """Stateful filter: `step(action, measured)` once per control tick. See the module docstring."""

    config: SafetyConfig
    _enabled: bool = field(init=False)
    _estop_reason: str | None = field(init=False, default=None)
    _reference: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._enabled = bool(self.config.enable_on_start)

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def last_command(self) -> np.ndarray | None:
        """The last command let through in the current sequence (None at the start of a sequence)."""
        return None if self._reference is None else self._reference.copy()

    def enable(self) -> None:
        """Allow motion; the next command starts a new sequence from the measured position.

        Raises RuntimeError while the e-stop is latched: reset it first, deliberately.
        """
        if self.estopped:
            raise RuntimeError(f"e-stop is latched ({self._estop_reason}); reset the e-stop before enabling")
        if not self._enabled:
            self._reference = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        self._reference = None

    def estop(self, reason: str = "e-stop") -> None:
        """Stop commanding at once and latch: stays stopped until `reset_estop()` and then `enable()`."""
        self._estop_reason = reason or "e-stop"
        self.disable()

    def reset_estop(self) -> None:
        """Clear the latch. The filter stays disabled: motion needs an explicit `enable()` afterwards."""
        self._estop_reason = None

    def restart_sequence(self) -> None:
        """Forget the last command: the next command is step-limited against the measured position.

        Call when the world jumped (robot driver restarted, joints teleported), so the arm is not pulled towards a
        target that made sense before the jump.
        """
        self._reference = None

    def hold_reason(self) -> str | None:
        """Why the filter would hold regardless of the inputs, or None if it would let a command through."""
        if self._estop_reason is not None:
            return f"e-stop latched: {self._estop_reason}"
        if not self._enabled:
            return "disabled (call ~/enable with data: true)"
        return None

    # ---- the filter ----------------------------------------------------------------------------------------
    def step(self, action: np.ndarray | None, measured: np.ndarray | None, hold: str | None = None) -> SafetyDecision:
        """Filter one proposed action.

        action: (n,) proposed absolute position targets (may be None when there is nothing to propose).
        measured: (n,) measured joint positions in the same order (used only to start a sequence).
        hold: a reason from the caller to hold this tick (stale sensor, error); None if the inputs are good.
        """
        reason = self.hold_reason() or hold
        if reason:
            return SafetyDecision(None, reason)
        n = self.config.num_joints
        proposed = _as_vector(action, n)
        if proposed is None:
            return SafetyDecision(None, f"model output is not a finite vector of {n} values: {_describe(action)}")
        reference = self._reference
        if reference is None:
            pos = _as_vector(measured, n)
            if pos is None:
                return SafetyDecision(None, f"measured joint positions are not {n} finite values: {_describe(measured)}")
            reference = np.clip(pos, self.config.lower, self.config.upper)
        cmd = np.clip(proposed, reference - self.config.max_step, reference + self.config.max_step)
        # reference is inside the limits, so clipping to the limits keeps cmd within max_step of it.
        cmd = np.clip(cmd, self.config.lower, self.config.upper)
        self._reference = cmd.copy()
        return SafetyDecision(cmd, "", clamped=bool(np.any(cmd != proposed)), reference=reference)


class LimitedPolicy:
    """A policy (`reset`, `set_instruction`, `act`) whose actions pass through a `SafetyFilter` as the policy node's
    do, for evaluating without ROS what the node would command: enabled from the start, and every episode (`reset`)
    starts a new command sequence from the measured joint positions (`observation["joint_pos"]`). Only the filter:
    not the node's sensor or tracking checks. A hold (a non-finite action) repeats the last command, which is what a
    position controller keeps. `clamped_per_episode` counts the actions the filter changed in each episode (one
    entry per `reset`); other attributes are the policy's."""

    def __init__(self, policy, config: SafetyConfig):
        self.policy = policy
        self.filter = SafetyFilter(replace(config, enable_on_start=True))
        self.clamped_per_episode: list[int] = [0]

    @property
    def clamped(self) -> int:
        """Actions the filter changed, all episodes."""
        return sum(self.clamped_per_episode)

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def reset(self) -> None:
        self.policy.reset()
        self.filter.restart_sequence()
        self.clamped_per_episode.append(0)

    def set_instruction(self, text: str) -> None:
        self.policy.set_instruction(text)

    def act(self, observation) -> np.ndarray:
        measured = observation["joint_pos"]
        decision = self.filter.step(self.policy.act(observation), measured)
        if decision.command is None:
            last = self.filter.last_command
            return last if last is not None else np.asarray(measured, dtype=np.float64).copy()
        self.clamped_per_episode[-1] += decision.clamped
        return decision.command


def _as_vector(values: object, n: int) -> np.ndarray | None:
    """float64 (n,) copy of values if it has n finite entries, else None."""
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr.copy()


def _describe(values: object) -> str:
    try:
        arr = np.asarray(values, dtype=np.float64)
        return f"shape {arr.shape}, {int(np.sum(~np.isfinite(arr)))} non-finite"
    except (TypeError, ValueError):
        return f"{type(values).__name__}"
