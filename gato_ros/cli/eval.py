"""`gato-ros eval`: closed-loop evaluation of a model bundle, the scripted expert or a random policy in the sim.

    gato-ros eval --policy expert|random|BUNDLE_DIR [--task T ...] --episodes N --seed S --json [--video out.mp4]
    gato-ros eval --policy BUNDLE_DIR --prompt expert|DATASET_DIR ...   # Gato few-shot prompting

Prints the DESIGN.md contract JSON: {"policy", "tasks": {T: {"episodes", "success_rate", "ci95", "mean_steps"}},
"tick_ms": {"p50", "p99"}} plus extra fields. Episode i of each task uses env seed `seed + i`; the default seed
(1000000) keeps evaluation layouts apart from `gato-ros collect`'s default seeds (0, 1, ...).

`--ros` runs the same episodes through the ROS 2 node graph (sim node + policy node over DDS) by delegating to
`gato_ros.ros.eval_ros.evaluate_ros(args)`, which must return the same JSON object.
"""
from __future__ import annotations

import argparse

DEFAULT_SEED = 1_000_000
DEFAULT_PROMPT_SEED = 2_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, metavar="expert|random|BUNDLE_DIR",
                        help="the scripted expert, a random-walk policy, or a model bundle directory")
    parser.add_argument("--task", action="append", metavar="T",
                        help="task to evaluate: reach, pick_place, all (= those two) or the variant point_above "
                        "(repeatable; default: all)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task (default 20)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"env seed of episode 0 (default {DEFAULT_SEED})")
    parser.add_argument("--reach-distractors", choices=["colour", "attribute"], default="colour",
                        help="reach layouts: distinct colours (default) or distractors sharing colour/shape")
    parser.add_argument("--pick-place-layout", choices=["rows", "any"], default="rows",
                        help="pick_place layouts: cubes near / bowls far (default) or any slots")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--video", metavar="PATH", help="write an MP4 of the first episodes of each task")
    parser.add_argument("--video-episodes", type=int, default=2, help="episodes per task in the video (default 2)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="camera image size (default: the bundle's, else 64)")
    parser.add_argument("--execution-provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                        help="ONNX Runtime provider for a bundle (default auto)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="ONNX Runtime CPU threads for a bundle (default 1, as the policy node's "
                             "inference_threads; 0: the runtime's default, min(cores, 4)); not with --ros, where the "
                             "node's parameter file decides")
    parser.add_argument("--ros", action="store_true",
                        help="run the episodes through the ROS 2 node graph instead of calling the policy directly")
    parser.add_argument("--node-limits", action="store_true",
                        help="pass the actions through the policy node's safety filter with its default limits "
                             "(joint limits; 0.1 rad and 10 mm per tick), as a robot running the node gets them "
                             "and as --ros does; the JSON counts the commands it changed (clamped_commands)")
    parser.add_argument("--prompt", metavar="expert|DATASET_DIR",
                        help="Gato few-shot prompting: pin a successful demonstration of the same task before each "
                             "episode, from the scripted expert (fresh layouts from --prompt-seed) or a dataset")
    parser.add_argument("--prompt-seed", type=int, default=DEFAULT_PROMPT_SEED,
                        help=f"env seed of the first expert prompt (default {DEFAULT_PROMPT_SEED}: never used by "
                             "collect or eval defaults)")
    parser.add_argument("--out", metavar="PATH", help="also write the JSON result to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_policy(spec: str, env, seed: int, execution_provider: str = "auto", threads: int = 1):
    """(policy, name) for --policy: "expert", "random" or a bundle directory (checked against the env)."""
    from pathlib import Path

    from gato_ros.sim import RandomPolicy, ScriptedExpert

    if spec == "expert":
        return ScriptedExpert(env), "expert"
    if spec == "random":
        return RandomPolicy(env.joint_limits, seed=seed), "random"
    path = Path(spec)
    if not path.is_dir():
        raise SystemExit(f"--policy {spec!r} is neither 'expert', 'random' nor a model bundle directory")
    from gato_ros.runtime import RuntimePolicy  # lazy: onnxruntime only when a bundle is evaluated

    policy = RuntimePolicy.load(str(path), execution_provider=execution_provider, threads=threads or None)
    names = list(policy.joint_names)
    if names != env.joint_names:
        raise SystemExit(f"bundle {path} expects joints {names} but the sim has {env.joint_names}")
    size = policy.image_size
    size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else tuple(size))
    if size != env.config.image_size:
        raise SystemExit(f"bundle {path} expects {policy.image_size} px images, the env renders "
                         f"{env.config.image_size} px square images; drop --image-size or set it to the bundle's")
    return policy, str(path)


def _bundle_image_size(spec: str) -> int | None:
    """The bundle's image size from gato.json without loading ONNX (None if absent)."""
    import json
    from pathlib import Path

    meta = Path(spec) / "gato.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    size = data.get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else None


def run(args) -> int:
    import json
    import sys

    from gato_ros.cli.collect import resolve_tasks
    from gato_ros.evaluation import failures_text

    tasks = resolve_tasks(args.task)
    if args.episodes < 1:
        raise SystemExit("--episodes must be >= 1")
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0 (0: the runtime's default), got {args.threads}")
    if args.prompt and args.policy in ("expert", "random"):
        raise SystemExit("--prompt applies to a model bundle, not to --policy expert/random")
    if args.ros:
        if args.node_limits:
            raise SystemExit("--node-limits is what --ros does anyway (the policy node filters every action)")
        if args.prompt:
            raise SystemExit("--prompt is not supported with --ros yet: the policy node has no prompt interface")
        if args.threads != 1:
            raise SystemExit("--threads applies to the ROS-free path; with --ros the policy node's inference_threads "
                             "parameter (config/arm.yaml) decides")
        try:
            from gato_ros.ros import eval_ros
        except ModuleNotFoundError as e:
            if e.name not in ("gato_ros.ros.eval_ros", "gato_ros.ros"):
                raise
            raise SystemExit("--ros needs gato_ros.ros.eval_ros, which this installation does not have yet")
        result = eval_ros.evaluate_ros(args)
    else:
        from gato_ros.evaluation import evaluate
        from gato_ros.sim import ArmEnv, EnvConfig

        size = args.image_size
        if size is None and args.policy not in ("expert", "random"):
            size = _bundle_image_size(args.policy)
        env = ArmEnv(EnvConfig(image_size=size or 64, reach_distractors=args.reach_distractors,
                                       pick_place_layout=args.pick_place_layout))
        policy, name = load_policy(args.policy, env, args.seed, args.execution_provider, args.threads)
        limited = None  # with --node-limits
        if args.node_limits:
            from gato_ros.ros.policy_config import PolicyNodeConfig, safety_config
            from gato_ros.safety import LimitedPolicy

            joints = list(getattr(policy, "joint_names", env.joint_names))  # a bundle's, or the sim's (expert)
            limits = getattr(policy, "joint_limits", env.joint_limits)
            policy = limited = LimitedPolicy(policy, safety_config(PolicyNodeConfig(), joints, limits))
        prompts = None
        if args.prompt:
            from gato_ros.evaluation import dataset_prompts, expert_prompts

            if policy.cfg.prompt_steps == 0:
                raise SystemExit(f"--prompt: bundle {args.policy} was trained without prompt slots")
            prompts = (expert_prompts(env, args.prompt_seed) if args.prompt == "expert"
                       else dataset_prompts(args.prompt, args.prompt_seed))
        video = None
        if args.video:
            from gato_ros.sim.video import VideoWriter

            video = VideoWriter(args.video, fps=env.config.control_rate_hz)
        try:
            result = evaluate(env, policy, tasks, args.episodes, seed=args.seed, policy_name=name, video=video,
                              video_episodes=args.video_episodes, progress=not args.no_progress, prompts=prompts)
        finally:
            if video is not None:
                video.close()
            env.close()
        if video is not None:
            result["video"] = str(args.video)
        if limited is not None:  # one count per reset, i.e. per episode in evaluate's order: task by task
            result["node_limits"] = True
            clamped = limited.clamped_per_episode[1:]  # [0]: before the first episode
            for k, task in enumerate(result["tasks"]):
                per = clamped[k * args.episodes:(k + 1) * args.episodes]
                result["tasks"][task].update(clamped_commands=sum(per), episodes_clamped=sum(c > 0 for c in per))
        if args.prompt:
            result["prompt"] = {"source": args.prompt, "seed": args.prompt_seed, "steps": policy.cfg.prompt_steps}
        provider = getattr(policy, "provider", None)
        if provider is not None:
            result["provider"] = provider
            result["threads"] = policy.threads
    text = json.dumps(result)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for task, t in result["tasks"].items():
            lo, hi = t["ci95"]
            print(f"{task:12s} success {t['success_rate']:.1%} [{lo:.1%}, {hi:.1%}] over {t['episodes']} episodes, "
                  f"mean {t['mean_steps']:.1f} steps", file=sys.stdout)
            failed = failures_text(t)
            if failed not in (None, "-"):  # where the failures went (gato_ros.sim.tasks.OUTCOME_HELP)
                print(f"{'':12s} failures: {failed}")
        tick = result["tick_ms"]
        if tick.get("p50") is not None:
            print(f"policy tick p50 {tick['p50']:.2f} ms, p99 {tick['p99']:.2f} ms")
    return 0
