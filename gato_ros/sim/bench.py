"""Sim throughput benchmark: env steps per second with rendering, and what the rendering settings cost.

    python -m gato_ros.sim.bench [--steps 400] [--json]

Measures, in one process on this machine: physics per control tick, one camera render at 64x64 with the scene's
settings and with MuJoCo's default visual quality (4x MSAA, shadows), and end-to-end expert collection
(env.step + render + expert) in env steps per second. Numbers, not asserts: timing goals live here, not in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _time_render(env, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        env.render()
    return (time.perf_counter() - t0) / n * 1e3


def measure(steps: int = 400, image_size: int = 64) -> dict:
    from gato_ros.sim import ArmEnv, EnvConfig, ScriptedExpert
    from gato_ros.sim.env import mujoco
    from gato_ros.sim.rollout import run_episode

    out = {"mujoco": mujoco.__version__, "MUJOCO_GL": os.environ.get("MUJOCO_GL"), "image_size": image_size,
           "cpu_count": os.cpu_count()}
    env = ArmEnv(EnvConfig(image_size=image_size))
    env.reset(seed=0, options={"task": "pick_place"})
    hold = env.observation()["joint_pos"]
    t0 = time.perf_counter()
    for _ in range(steps):
        env.data.ctrl[env._actuators] = hold
        mujoco.mj_step(env.model, env.data, nstep=env.substeps)
    out["physics_ms_per_tick"] = (time.perf_counter() - t0) / steps * 1e3
    out["substeps"] = env.substeps
    env.render()  # warm-up (context creation)
    out["render_ms_scene_settings"] = _time_render(env, steps)

    # MuJoCo defaults for comparison: 4x multisampling, shadows from the key light, default tessellation.
    vis = env.model.vis
    saved = (vis.quality.offsamples, vis.quality.shadowsize, vis.quality.numslices, vis.quality.numstacks,
             env.model.light("key").castshadow.copy())
    env.close()
    vis.quality.offsamples, vis.quality.shadowsize, vis.quality.numslices, vis.quality.numstacks = 4, 4096, 28, 16
    env.model.light("key").castshadow[:] = 1
    env.render()
    out["render_ms_mujoco_default_quality"] = _time_render(env, max(steps // 4, 20))
    env.close()
    vis.quality.offsamples, vis.quality.shadowsize, vis.quality.numslices, vis.quality.numstacks = saved[:4]
    env.model.light("key").castshadow[:] = saved[4]

    expert = ScriptedExpert(env)
    for task in ("reach", "pick_place"):
        n_steps, seed = 0, 0
        t0 = time.perf_counter()
        while n_steps < steps:
            r = run_episode(env, expert, seed=seed, task=task, record=True)
            n_steps += r.steps
            seed += 1
        wall = time.perf_counter() - t0
        out[f"collect_{task}_env_steps_per_s"] = n_steps / wall
        out[f"collect_{task}_episodes_per_s"] = seed / wall
    env.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="steps per measurement (default 400)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="one JSON line")
    args = p.parse_args(argv)
    res = measure(args.steps, args.image_size)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
