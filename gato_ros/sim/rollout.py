"""Run one episode of a Policy in an `ArmEnv`: the loop shared by `collect` and `eval`.

Policy protocol: `reset()`, `set_instruction(text)`, `act(observation) -> (7,) action`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class EpisodeResult:
    task: str
    instruction: str
    seed: int | None
    success: bool
    steps: int
    tick_ms: list[float]  # policy.act latency per tick
    # Filled when recording: per-step observations and the action labels.
    observations: dict[str, np.ndarray] | None = None
    actions: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def run_episode(env, policy, seed: int | None, task: str | None = None, record: bool = False,
                on_frame: Callable[[object], None] | None = None,
                label: Callable[[np.ndarray], np.ndarray] | None = None) -> EpisodeResult:
    """Reset `env` with (seed, task), run `policy` until termination or truncation.

    record: keep every observation and action (for datasets). label: maps the executed action to the stored one
    (the expert's noiseless `clean_action` when collecting with noise). on_frame(env) is called after reset and
    after every step (video writers).
    """
    obs, info = env.reset(seed=seed, options={"task": task} if task else None)
    policy.reset()
    policy.set_instruction(info["instruction"])
    frames: dict[str, list] = {"image": [], "joint_pos": [], "joint_vel": []}
    actions: list[np.ndarray] = []
    ticks: list[float] = []
    if on_frame is not None:
        on_frame(env)
    done = False
    while not done:
        t0 = time.perf_counter()
        action = np.asarray(policy.act(obs), dtype=np.float64)
        ticks.append((time.perf_counter() - t0) * 1e3)
        if record:
            for k in frames:
                frames[k].append(obs[k])
            actions.append(label(action) if label is not None else action.copy())
        obs, _, terminated, truncated, info = env.step(action)
        if on_frame is not None:
            on_frame(env)
        done = terminated or truncated
    result = EpisodeResult(info["task"], info["instruction"], seed, bool(info["success"]), int(info["step"]), ticks,
                           info=info)
    if record:
        result.observations = {k: np.stack(v) for k, v in frames.items()}
        result.actions = np.stack(actions)
    return result
