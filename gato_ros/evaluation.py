"""Closed-loop evaluation of any Policy (scripted expert, random, ONNX runtime bundle) in the sim.

For each task, episode i runs with env seed `seed + i`, so every policy meets exactly the same layouts and
numbers are comparable across policies and runs. Reports, per task, the success rate with a Wilson 95% score
interval (Wilson 1927; better than the normal approximation at rates near 0 or 1 and small n), the mean number of
steps, and the policy's `act()` latency over all ticks (p50/p99, ms).

Output (the DESIGN.md contract; extra fields are additions):

    {"policy": str,
     "tasks": {task: {"episodes": n, "success_rate": x, "ci95": [lo, hi], "mean_steps": m, ...}},
     "tick_ms": {"p50": ..., "p99": ...}, ...}
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-18 rounding residue
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def percentiles(values: Sequence[float]) -> dict:
    if len(values) == 0:
        return {"p50": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "max": float(a.max())}


def failures_text(task_result: dict) -> str | None:
    """How a task's failed episodes ended, e.g. "other bowl 23, held 2" ("-" when none failed; None when the result
    has no `outcomes`: `--ros` results and those written before outcomes were counted)."""
    if "outcomes" not in task_result:
        return None
    failed = {k: n for k, n in task_result["outcomes"].items() if k != "success"}
    return ", ".join(f"{k} {n}" for k, n in failed.items()) or "-"


def evaluate(env, policy, tasks: Sequence[str], episodes: int, seed: int = 0, policy_name: str = "policy",
             video=None, video_episodes: int = 2, progress: bool = True,
             on_episode: Callable[[object], None] | None = None,
             prompts: Callable[[str, int], tuple[dict, np.ndarray]] | None = None) -> dict:
    """Run `episodes` episodes per task and summarise (see the module docstring).

    video: a `gato_ros.sim.video.VideoWriter` (or None); the first `video_episodes` episodes of each task are
    drawn into it. prompts: Gato few-shot prompting; `prompts(task, i)` returns a demonstration (observations,
    actions) that is pinned with `policy.set_prompt` before episode i of `task` (the policy must support it).
    """
    from gato_ros.sim.rollout import run_episode
    from gato_ros.sim.tasks import get_task

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    for t in tasks:
        get_task(t)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes * len(tasks), unit="ep", desc=f"eval {policy_name}", leave=False)
    t0 = time.perf_counter()
    ticks: list[float] = []
    per_task = {}
    total_steps = 0
    for task in tasks:
        results = []
        for i in range(episodes):
            on_frame = None
            if video is not None and i < video_episodes:
                on_frame = lambda e: video.append(e.render_video_frame())  # noqa: E731
            if prompts is not None:
                policy.set_prompt(*prompts(task, i))
            r = run_episode(env, policy, seed=seed + i, task=task, on_frame=on_frame)
            r.info["outcome"] = env.outcome()
            results.append(r)
            ticks.extend(r.tick_ms)
            total_steps += r.steps
            if on_episode is not None:
                on_episode(r)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(task=task, success=f"{np.mean([x.success for x in results]):.2f}")
        k = sum(r.success for r in results)
        lo, hi = wilson_interval(k, len(results))
        steps = [r.steps for r in results]
        ok_steps = [r.steps for r in results if r.success]
        per_task[task] = {
            "episodes": len(results),
            "success_rate": k / len(results),
            "ci95": [lo, hi],
            "mean_steps": float(np.mean(steps)),
            "successes": k,
            "mean_steps_success": float(np.mean(ok_steps)) if ok_steps else None,
            "seeds": [seed, seed + episodes - 1],
            # how the episodes ended (sim.tasks.OUTCOME_HELP): where the failures went
            "outcomes": dict(sorted(Counter(r.info["outcome"] for r in results).items(), key=lambda kv: -kv[1])),
        }
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    if prompts is not None:
        policy.set_prompt(None)
    return {
        "policy": policy_name,
        "tasks": per_task,
        "tick_ms": percentiles(ticks),
        "episodes": episodes * len(tasks),
        "steps": total_steps,
        "wall_s": wall,
        "env_steps_per_s": total_steps / wall if wall > 0 else None,
        "image_size": env.config.image_size,
        "control_rate_hz": env.config.control_rate_hz,
        "seed": seed,
    }


def expert_prompts(env, seed: int) -> Callable[[str, int], tuple[dict, np.ndarray]]:
    """Prompt source for `evaluate`: a fresh scripted-expert demonstration of the same task per episode, on env seed
    `seed + i` (keep it apart from training and evaluation seeds). Only successful demonstrations are returned
    (seeds whose demonstration fails are skipped), so the prompt ends at the goal, as in Gato."""
    from gato_ros.sim import ScriptedExpert
    from gato_ros.sim.rollout import run_episode

    expert = ScriptedExpert(env)

    def demo(task: str, i: int) -> tuple[dict, np.ndarray]:
        for k in range(20):
            r = run_episode(env, expert, seed=seed + i + k * 1_000_003, task=task, record=True)
            if r.success:
                return r.observations, r.actions
        raise RuntimeError(f"the scripted expert failed 20 demonstrations of {task!r} from seed {seed + i}")

    return demo


def dataset_prompts(path, seed: int = 0) -> Callable[[str, int], tuple[dict, np.ndarray]]:
    """Prompt source for `evaluate`: successful episodes of the same task from the dataset at `path`, in a fixed
    shuffled order (`seed`); ValueError naming the task if the dataset has none."""
    from gato_ros.dataset import _read_meta, episode_paths, read_episode, read_header

    header = read_header(path)
    by_task: dict[str, list] = {}
    for p in episode_paths(path):  # the small per-episode meta only; images are read when a prompt is used
        meta = _read_meta(p)
        if meta["success"]:
            by_task.setdefault(meta["task"], []).append(p)
    order = np.random.default_rng(seed)
    shuffled = {t: [paths[j] for j in order.permutation(len(paths))] for t, paths in sorted(by_task.items())}

    def demo(task: str, i: int) -> tuple[dict, np.ndarray]:
        paths = shuffled.get(task)
        if not paths:
            raise ValueError(f"prompt dataset {path} has no successful {task!r} episode "
                             f"(it has: {sorted(shuffled) or 'none'})")
        ep = read_episode(paths[i % len(paths)], header)
        return ep.observations, ep.actions

    return demo
