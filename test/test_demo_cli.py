"""`gato-ros demo` and `gato-ros eval --ros`: smoke runs over real DDS with the exported tiny bundle.

The tiny bundle is untrained, so these tests check the plumbing and the reports (same episodes, same JSON shape,
files written), never a success rate.
"""
import json
import subprocess
import sys

import pytest

pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")
pytest.importorskip("mujoco", reason="the sim needs MuJoCo (pip install -e '.[sim]')")

from ros_support import tiny_bundle  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow, pytest.mark.timeout(240)]
CLI = [sys.executable, "-c", "import sys; from gato_ros.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def cli(*args, timeout=200):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def test_eval_ros_reports_the_same_json_as_without_ros(bundle, tmp_path):
    common = ["eval", "--policy", str(bundle), "--task", "reach", "--episodes", "1", "--seed", "5", "--json",
              "--execution-provider", "cpu", "--no-progress"]
    direct = cli(*common)
    over_ros = cli(*common, "--ros", "--video", str(tmp_path / "eval.mp4"))
    assert direct.returncode == 0, direct.stderr
    assert over_ros.returncode == 0, over_ros.stderr
    a, b = json.loads(direct.stdout), json.loads(over_ros.stdout)
    assert set(a) - {"image_size", "provider", "threads", "video"} <= set(b)  # the contract keys and the extras
    for key in ("episodes", "success_rate", "ci95", "mean_steps"):
        assert key in b["tasks"]["reach"]
    assert b["policy"] == a["policy"] and b["tasks"]["reach"]["episodes"] == 1
    assert b["tasks"]["reach"]["seeds"] == a["tasks"]["reach"]["seeds"] == [5, 5]  # the same layout
    assert b["tick_ms"]["p50"] > 0 and b["image_to_command_ms"]["p50"] > 0 and b["transport"] == "ros2"
    # the fixture's actions stay inside the node's step limits, so its safety filter changed none of them
    assert b["tasks"]["reach"]["clamped_commands"] == b["tasks"]["reach"]["episodes_clamped"] == 0
    # an untrained model does not succeed, so both ran the episode to its step budget
    assert a["tasks"]["reach"]["mean_steps"] == b["tasks"]["reach"]["mean_steps"] == 60
    import imageio.v2 as imageio

    assert b["video"] == str(tmp_path / "eval.mp4")
    assert len(imageio.mimread(tmp_path / "eval.mp4", memtest=False)) >= 50


def test_eval_ros_refuses_the_expert_with_a_reason():
    out = cli("eval", "--policy", "expert", "--ros", "--episodes", "1", timeout=60)
    assert out.returncode != 0 and "needs the sim's state" in out.stderr


def test_demo_writes_table_video_and_latency_plot(bundle, tmp_path):
    out = cli("demo", "--model", str(bundle), "--episodes", "2", "--task", "reach", "--out", str(tmp_path),
              "--execution-provider", "cpu", "--no-progress")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "instruction" in out.stdout and "tick p50 ms" in out.stdout and "reach the " in out.stdout
    result = json.loads((tmp_path / "demo.json").read_text())
    assert [r["task"] for r in result["episodes"]] == ["reach", "reach"]
    assert [r["seed"] for r in result["episodes"]] == [1_000_000, 1_000_001]
    assert all(r["steps"] == 60 for r in result["episodes"])
    assert result["provider"] == "CPUExecutionProvider"
    assert result["tick_ms"]["p50"] > 0 and result["image_to_command_ms"]["p99"] > 0
    assert result["commands"] >= 120 and result["clamped_commands"] == 0
    assert all(r["clamped"] == 0 for r in result["episodes"]) and "0 of " in out.stdout
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "demo.mp4", memtest=False)
    assert len(frames) >= 60 and frames[0].shape == (256, 256, 3)
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_demo_falls_back_loudly_or_explains(monkeypatch, tmp_path):
    from gato_ros.cli import demo
    from gato_ros.ros import graph

    monkeypatch.setattr(graph, "share_path", lambda rel: tmp_path / rel)
    with pytest.raises(SystemExit, match="no model bundle.*gato-ros export"):
        demo.find_bundle(None)
    other = tmp_path / "models" / "some_bundle"
    other.mkdir(parents=True)
    (other / "gato.json").write_text("{}")
    path, warning = demo.find_bundle(None)
    assert path == str(other) and "gato_arm_small is missing" in warning and "not the shipped model" in warning


def test_demo_with_a_broken_bundle_says_why_without_a_traceback(tmp_path):
    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "gato.json").write_text('{"format": "something else"}')
    out = cli("demo", "--model", str(broken), "--episodes", "1", "--out", str(tmp_path / "out"), "--no-progress",
              timeout=120)
    assert out.returncode != 0
    assert "gato_policy exited with code 1 during start-up" in out.stderr and "cannot load model bundle" in out.stderr
    assert "Traceback" not in out.stderr


def test_model_summary_says_whether_the_last_run_was_a_fine_tune():
    from gato_ros.cli.demo import _model_summary

    meta = {"name": "b", "model": {"name": "gato-arm"}, "provenance": {"step": 7, "data": ["d1", "d2"],
                                                                       "train_config": {"init": None}}}
    assert _model_summary(meta) == "b (gato-arm), trained 7 steps on 2 dataset(s)"
    meta["provenance"]["train_config"]["init"] = "runs/base.pt"
    assert _model_summary(meta) == "b (gato-arm), fine-tuned 7 steps from runs/base.pt on 2 dataset(s)"
    assert "untrained" in _model_summary({"name": "b"})
