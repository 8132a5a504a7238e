"""Evaluation: Wilson intervals, and the collect / eval / dataset info CLIs end to end on tiny budgets."""
import json
import math

import numpy as np
import pytest

from gato_ros.cli import main
from gato_ros.dataset import EpisodeDataset, dataset_info
from gato_ros.evaluation import wilson_interval


def test_wilson_interval_known_values():
    # Reference values: Wilson (1927) score interval, z = 1.96; e.g. statsmodels proportion_confint(method="wilson").
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.88825, abs=1e-4) and hi == pytest.approx(0.97846, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _json_out(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_eval_expert_and_random_print_the_contract_json(capsys, tmp_path):
    video = tmp_path / "eval.mp4"
    assert main(["eval", "--policy", "expert", "--task", "reach", "--task", "pick_place", "--episodes", "3",
                 "--seed", "11", "--json", "--no-progress", "--video", str(video), "--video-episodes", "1"]) == 0
    res = _json_out(capsys)
    assert res["policy"] == "expert"
    for task in ("reach", "pick_place"):
        t = res["tasks"][task]
        assert t["episodes"] == 3 and t["success_rate"] == 1.0
        lo, hi = t["ci95"]
        assert 0 <= lo <= t["success_rate"] <= hi <= 1
        assert t["mean_steps"] > 5
        assert t["outcomes"] == {"success": 3}
    assert res["tick_ms"]["p50"] > 0 and res["tick_ms"]["p99"] >= res["tick_ms"]["p50"]
    assert video.stat().st_size > 1000

    assert main(["eval", "--policy", "random", "--task", "reach", "--episodes", "2", "--seed", "11", "--json",
                 "--no-progress"]) == 0
    res = _json_out(capsys)
    assert res["policy"] == "random" and res["tasks"]["reach"]["success_rate"] == 0.0
    assert res["tasks"]["reach"]["mean_steps"] == 60  # ran to the step budget
    outcomes = res["tasks"]["reach"]["outcomes"]  # where the failures went, counted
    assert sum(outcomes.values()) == 2 and set(outcomes) <= {"other object", "missed"}


def test_eval_node_limits_counts_what_the_node_filter_changes(capsys):
    """--node-limits puts the policy node's safety filter between the policy and the sim: the random policy's
    steps (normal, 0.06 rad sd) exceed 0.1 rad now and then, the expert's never do."""
    assert main(["eval", "--policy", "random", "--task", "reach", "--episodes", "2", "--seed", "11", "--json",
                 "--no-progress", "--node-limits"]) == 0
    res = _json_out(capsys)
    t = res["tasks"]["reach"]
    assert res["node_limits"] is True and t["clamped_commands"] > 0 and t["episodes_clamped"] == 2
    assert main(["eval", "--policy", "expert", "--task", "reach", "--episodes", "1", "--json", "--no-progress",
                 "--node-limits"]) == 0
    t = _json_out(capsys)["tasks"]["reach"]
    assert t["clamped_commands"] == t["episodes_clamped"] == 0 and t["success_rate"] == 1.0
    with pytest.raises(SystemExit, match="what --ros does anyway"):
        main(["eval", "--policy", "expert", "--ros", "--node-limits", "--episodes", "1"])


def test_eval_rejects_unknown_policy_and_task(capsys):
    with pytest.raises(SystemExit, match="neither"):
        main(["eval", "--policy", "/nonexistent/bundle", "--episodes", "1", "--no-progress"])
    with pytest.raises(ValueError, match="unknown task"):
        main(["eval", "--policy", "expert", "--task", "juggle", "--episodes", "1", "--no-progress"])


def test_collect_then_dataset_info(capsys, tmp_path):
    out = tmp_path / "demos"
    video = tmp_path / "collect.mp4"
    assert main(["collect", "--task", "reach", "--episodes", "3", "--out", str(out), "--seed", "0", "--noise", "0.01",
                 "--json", "--no-progress", "--video", str(video), "--video-episodes", "1"]) == 0
    summary = _json_out(capsys)
    assert summary["written"] == 3 and summary["expert_success_rate"]["reach"] == 1.0
    assert video.stat().st_size > 1000
    assert main(["dataset", "info", str(out), "--json"]) == 0
    info = _json_out(capsys)
    assert info["episodes"] == 3 and info["fps"] == 20.0 and set(info["tasks"]) == {"reach"}
    assert info["steps"] == summary["env_steps"]
    # Appending episodes of another image size to the same directory is refused before any work is done.
    with pytest.raises(SystemExit, match="image_size"):
        main(["collect", "--task", "reach", "--episodes", "1", "--out", str(out), "--image-size", "32",
              "--no-progress"])
    assert dataset_info(out)["episodes"] == 3


    ds = EpisodeDataset(out)
    ep = ds[0]
    assert ep.observations["image"].shape == (len(ep), 64, 64, 3)
    assert ep.meta["source"] == "sim-expert" and ep.meta["expert"]["noise"] == 0.01
    assert ep.instruction.startswith("reach the ")
    target = next(o for o in ep.meta["layout"]["objects"] if o["body"] == ep.meta["layout"]["target"])
    assert ep.instruction == f"reach the {target['colour']} {target['kind']}"
    # Labels are the clean expert targets: bounded steps from one tick to the next.
    assert np.abs(np.diff(ep.actions[:, :6], axis=0)).max() <= 0.06 + 1e-9


def test_help_on_every_subcommand(capsys):
    for argv in (["collect", "--help"], ["eval", "--help"], ["dataset", "--help"], ["dataset", "info", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--policy" in capsys.readouterr().out


def test_eval_a_real_bundle(capsys, tmp_path_factory):
    """The BUNDLE_DIR path: an untrained tiny bundle exported by the real export code, run by ONNX Runtime."""
    from ros_support import tiny_bundle

    bundle = tiny_bundle(tmp_path_factory)
    assert main(["eval", "--policy", str(bundle), "--task", "reach", "--episodes", "1", "--seed", "3", "--json",
                 "--no-progress", "--execution-provider", "cpu"]) == 0
    res = _json_out(capsys)
    assert res["policy"] == str(bundle) and res["provider"] == "CPUExecutionProvider"
    assert res["threads"] == 1  # the policy node's default, so eval's tick_ms is the node's inference time
    t = res["tasks"]["reach"]
    assert t["episodes"] == 1 and 0 <= t["success_rate"] <= 1 and t["mean_steps"] >= 1
    assert res["tick_ms"]["p50"] > 0
    with pytest.raises(SystemExit, match="px"):
        main(["eval", "--policy", str(bundle), "--task", "reach", "--episodes", "1", "--image-size", "32",
              "--no-progress"])
    assert main(["eval", "--policy", str(bundle), "--task", "reach", "--episodes", "1", "--seed", "3", "--json",
                 "--no-progress", "--execution-provider", "cpu", "--threads", "2"]) == 0
    res2 = _json_out(capsys)
    assert res2["threads"] == 2 and res2["tasks"] == res["tasks"]  # threads change the speed, not the actions
    with pytest.raises(SystemExit, match="--threads applies to the ROS-free path"):
        main(["eval", "--policy", str(bundle), "--episodes", "1", "--ros", "--threads", "2", "--no-progress"])
    for flag, value in (("--reach-distractors", "attribute"), ("--pick-place-layout", "any")):
        with pytest.raises(SystemExit, match=f"{flag} {value} is not supported with --ros"):
            main(["eval", "--policy", str(bundle), "--episodes", "1", "--ros", flag, value, "--no-progress"])


def test_eval_with_gato_prompts_from_the_expert_and_a_dataset(capsys, tmp_path_factory, tmp_path):
    """--prompt pins a successful same-task demonstration before each episode, and the prompt reaches the model."""
    from ros_support import tiny_bundle

    from gato_ros.evaluation import dataset_prompts, expert_prompts
    from gato_ros.runtime import RuntimePolicy
    from gato_ros.sim import ArmEnv, EnvConfig

    bundle = tiny_bundle(tmp_path_factory)
    assert main(["eval", "--policy", str(bundle), "--task", "reach", "--episodes", "2", "--seed", "3", "--json",
                 "--no-progress", "--prompt", "expert", "--execution-provider", "cpu"]) == 0
    res = _json_out(capsys)
    assert res["prompt"]["source"] == "expert" and res["prompt"]["steps"] >= 1
    assert res["tasks"]["reach"]["episodes"] == 2

    env = ArmEnv(EnvConfig(image_size=64))
    try:
        obs, info = env.reset(seed=7, options={"task": "reach"})
        demo_obs, demo_act = expert_prompts(env, 2_000_000)("pick_place", 0)
        assert len(demo_act) > 10 and demo_obs["image"].shape[1:] == (64, 64, 3)
        policy = RuntimePolicy.load(str(bundle), execution_provider="cpu")
        policy.trace = []
        policy.set_instruction(info["instruction"])
        policy.act(obs)
        n = len(policy.trace)
        policy.set_prompt(demo_obs, demo_act)
        policy.act(obs)
        plain, prompted = policy.trace[:n], policy.trace[n:]
        assert n > 0 and len(prompted) > 0
        assert max(float(np.abs(a - b).max()) for a, b in zip(plain, prompted)) > 1e-4  # the model saw the prompt
    finally:
        env.close()

    data = tmp_path / "demos"
    assert main(["collect", "--task", "reach", "--episodes", "2", "--seed", "40", "--out", str(data),
                 "--no-progress"]) == 0
    capsys.readouterr()
    demo_obs, demo_act = dataset_prompts(data)("reach", 5)
    assert len(demo_act) == len(demo_obs["joint_pos"]) > 5
    with pytest.raises(ValueError, match="no successful 'pick_place'"):
        dataset_prompts(data)("pick_place", 0)
    with pytest.raises(SystemExit, match="--ros"):
        main(["eval", "--policy", str(bundle), "--episodes", "1", "--prompt", "expert", "--ros", "--no-progress"])
