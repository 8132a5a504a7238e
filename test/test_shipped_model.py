"""The shipped bundle models/gato_arm_small: loads (gato.json checked against the graphs), and drives the sim."""
import json
from pathlib import Path

import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "gato_arm_small"
pytestmark = pytest.mark.skipif(not (BUNDLE / "gato.json").is_file(), reason="no shipped bundle in this checkout")


def test_shipped_bundle_runs_closed_loop_in_the_sim():
    from gato_ros.runtime import RuntimePolicy
    from gato_ros.sim import ArmEnv, EnvConfig

    policy = RuntimePolicy.load(str(BUNDLE), execution_provider="cpu")  # validates gato.json against the graphs
    assert policy.provider == "CPUExecutionProvider"
    with ArmEnv(EnvConfig(image_size=policy.image_size)) as env:
        assert list(policy.joint_names) == env.joint_names
        obs, info = env.reset(seed=1_000_000, options={"task": "reach"})
        policy.reset()
        policy.set_instruction(info["instruction"])
        start = obs["joint_pos"].copy()
        for _ in range(5):
            action = policy.act(obs)
            assert action.shape == (7,) and np.all(np.isfinite(action))
            obs, _, terminated, truncated, info = env.step(action)
            assert not truncated
        assert np.abs(obs["joint_pos"] - start).max() > 1e-3  # the trained policy moves the arm


def test_shipped_bundle_records_its_evaluation_and_card():
    meta = json.loads((BUNDLE / "gato.json").read_text())
    assert meta["name"] == "gato_arm_small"
    assert set(meta["eval"]["tasks"]) == {"reach", "pick_place"}
    card = (BUNDLE / "README.md").read_text()
    rate = meta["eval"]["tasks"]["reach"]["success_rate"]
    assert f"| gato_arm_small | reach | {meta['eval']['tasks']['reach']['episodes']} | {rate:.0%} |" in card
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) < 25_000_000  # issue 6: at most 25 MB
