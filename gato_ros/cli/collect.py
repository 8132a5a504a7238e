"""`gato-ros collect`: scripted-expert demonstrations in the sim, written as an episode dataset.

    gato-ros collect --task reach --episodes 200 --out data/reach --seed 0 [--noise 0.02] [--video demo.mp4]

Episode i of each task uses env seed `seed + i` (evaluation defaults to seed 1000000, so default collections and
evaluations never share layouts). With `--noise X` the executed actions get N(0, X) rad noise while the stored
labels are the expert's noiseless targets (DART).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", action="append", metavar="T",
                        help="task to demonstrate: reach, pick_place, all (= those two) or the variant point_above "
                        "(repeatable; default: all)")
    parser.add_argument("--episodes", type=int, required=True, help="episodes per task")
    parser.add_argument("--out", required=True, help="dataset directory (created; existing datasets are appended to)")
    parser.add_argument("--seed", type=int, default=0, help="env seed of the first episode (default 0)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="std of Gaussian noise on executed arm targets, rad (labels stay clean; default 0)")
    parser.add_argument("--image-size", type=int, default=64, help="camera image size in pixels (default 64)")
    parser.add_argument("--successes-only", action="store_true",
                        help="skip failed episodes (default: keep all, each marked with its success flag)")
    parser.add_argument("--video", metavar="PATH", help="also write an MP4 of the first episodes of each task")
    parser.add_argument("--video-episodes", type=int, default=2, help="episodes per task in the video (default 2)")
    parser.add_argument("--reach-distractors", choices=["colour", "attribute"], default="colour",
                        help="reach layouts: distinct colours (default) or distractors sharing colour/shape")
    parser.add_argument("--pick-place-layout", choices=["rows", "any"], default="rows",
                        help="pick_place layouts: cubes near / bowls far (default) or any slots")
    parser.add_argument("--json", action="store_true", help="print a JSON summary (dataset info + rates) at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_tasks(names: list[str] | None) -> list[str]:
    from gato_ros.sim.tasks import TASKS, get_task

    if not names or "all" in names:
        return sorted(TASKS)
    out = []
    for n in names:
        for part in n.split(","):
            get_task(part)  # ValueError naming the known tasks
            if part not in out:
                out.append(part)
    return out


def layout_dict(layout) -> dict:
    """JSON-ready description of an episode's layout (gato_ros.sim.tasks.Layout)."""
    from dataclasses import asdict

    return {
        "target": layout.target,
        "receptacle": layout.receptacle,
        "objects": [asdict(o) for o in layout.objects],
    }


def run(args) -> int:
    import json
    import sys
    import time
    from dataclasses import asdict
    from datetime import datetime, timezone

    from tqdm import tqdm

    from gato_ros.dataset import Episode, dataset_info, git_commit, init_dataset, write_episode
    from gato_ros.sim import ArmEnv, EnvConfig, ScriptedExpert
    from gato_ros.sim.rollout import run_episode

    if args.episodes < 1:
        raise SystemExit("--episodes must be >= 1")
    if args.noise < 0:
        raise SystemExit("--noise must be >= 0")
    tasks = resolve_tasks(args.task)
    config = EnvConfig(image_size=args.image_size, reach_distractors=args.reach_distractors,
                       pick_place_layout=args.pick_place_layout)
    env = ArmEnv(config)
    expert = ScriptedExpert(env, noise=args.noise, seed=args.seed)
    meta = {
        "joint_names": env.joint_names,
        "joint_limits": env.joint_limits.tolist(),
        "control_rate_hz": config.control_rate_hz,
        "image_size": config.image_size,
        "source": "sim-expert",
        "git_commit": git_commit(),
        "env_config": asdict(config),
        "expert": {"noise": args.noise, "max_joint_step": expert.max_joint_step,
                   "max_gripper_step": expert.max_gripper_step},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        init_dataset(args.out, meta)  # refuse an incompatible existing dataset before collecting anything
    except ValueError as e:
        raise SystemExit(f"gato-ros collect: {e}")
    video = None
    if args.video:
        from gato_ros.sim.video import VideoWriter

        video = VideoWriter(args.video, fps=config.control_rate_hz)
    bar = tqdm(total=args.episodes * len(tasks), unit="ep", desc="collect", disable=args.no_progress)
    t0 = time.perf_counter()
    steps = written = 0
    successes = {t: 0 for t in tasks}
    try:
        for task in tasks:
            for i in range(args.episodes):
                on_frame = None
                if video is not None and i < args.video_episodes:
                    on_frame = lambda e: video.append(e.render_video_frame())  # noqa: E731
                r = run_episode(env, expert, seed=args.seed + i, task=task, record=True, on_frame=on_frame,
                                label=lambda a: expert.clean_action.copy())
                steps += r.steps
                successes[task] += int(r.success)
                if r.success or not args.successes_only:
                    # Privileged layout (object kinds, colours, slots, positions; target and bowl) for analysis
                    # and auxiliary losses; the policy itself never sees it.
                    ep_meta = dict(meta, layout=layout_dict(env.layout))
                    write_episode(args.out, Episode(r.observations, r.actions, r.instruction, r.task, r.seed,
                                                    r.success, ep_meta))
                    written += 1
                bar.update(1)
                bar.set_postfix(task=task, steps_per_s=f"{steps / (time.perf_counter() - t0):.0f}",
                                success=f"{successes[task] / (i + 1):.2f}")
    finally:
        bar.close()
        if video is not None:
            video.close()
        env.close()
    wall = time.perf_counter() - t0
    summary = {
        "out": str(args.out),
        "written": written,
        "expert_success_rate": {t: successes[t] / args.episodes for t in tasks},
        "env_steps": steps,
        "wall_s": wall,
        "env_steps_per_s": steps / wall,
        "episodes_per_s": args.episodes * len(tasks) / wall,
        "dataset": dataset_info(args.out),
    }
    if video is not None:
        summary["video"] = str(args.video)
    if args.json:
        print(json.dumps(summary))
    else:
        rates = ", ".join(f"{t} {r:.1%}" for t, r in summary["expert_success_rate"].items())
        print(f"wrote {written} episodes ({steps} steps) to {args.out} in {wall:.1f} s "
              f"({summary['env_steps_per_s']:.0f} env steps/s); expert success: {rates}", file=sys.stderr)
    return 0
