"""Training: the loss falls, checkpoints resume, bad data stops at once, the CLI and 2-process DDP run."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gato_ros.dataset import Episode, write_episode
from gato_ros.model.data import synthetic_episodes
from gato_ros.model.train import TrainConfig, load_checkpoint, lr_at, train

TINY = dict(config="gato-tiny", batch_size=8, lr=3e-3, warmup=5, val_batches=2, progress=False, threads=1)


def _write_dataset(root: Path, n: int = 4, steps: int = 12, seed: int = 0) -> Path:
    for ep in synthetic_episodes(n, steps, seed):
        meta = {"joint_names": ep.meta["joint_names"], "joint_limits": [[-3.0, 3.0]] * 6 + [[0.0, 0.05]],
                "control_rate_hz": 20.0, "image_size": 64, "source": "synthetic"}
        write_episode(root, Episode(ep.observations, ep.actions, ep.instruction, ep.task, ep.seed, ep.success, meta))
    return root


def test_validation_loss_falls(tmp_path):
    eps = synthetic_episodes(6, 16, seed=1)
    res = train(TrainConfig(out=str(tmp_path / "run"), steps=25, val_every=25, **dict(TINY, lr=6e-3)), episodes=eps)
    rows = [r for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    first_train = float(rows[0].split(",")[2])
    assert res["val_loss"] < 0.6 * first_train, (res, first_train)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    ck = load_checkpoint(tmp_path / "run")
    assert ck["step"] == 25 and "git_commit" in ck and ck["config"]["tokenizer"]["num_bins"] == 1024


def test_precision_choice_bf16_autocast_trains_and_is_recorded(tmp_path, monkeypatch):
    import torch

    import gato_ros.model.train as tr

    cpu = torch.device("cpu")
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: False)
    assert tr.amp_dtype("auto", cpu) is None and tr.amp_dtype("fp32", cpu) is None
    assert tr.amp_dtype("bf16", cpu) is torch.bfloat16 and tr.amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: True)
    assert tr.amp_dtype("auto", cpu) is torch.bfloat16 and tr.amp_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="decision_weight"):
        TrainConfig(decision_weight=0.0)
    eps = synthetic_episodes(6, 16, seed=1)
    losses = {}
    for p in ("fp32", "bf16"):
        res = train(TrainConfig(out=str(tmp_path / p), steps=20, val_every=20, precision=p, decision_weight=3.0,
                                **dict(TINY, lr=6e-3)), episodes=eps)
        meta = json.loads((tmp_path / p / "train_config.json").read_text())
        assert meta["autocast"] == p and meta["train_config"]["decision_weight"] == 3.0
        losses[p] = res["val_loss"]
    first = float((tmp_path / "bf16" / "log.csv").read_text().splitlines()[1].split(",")[2])
    assert losses["bf16"] < 0.7 * first and abs(losses["bf16"] - losses["fp32"]) < 0.1 * losses["fp32"], losses
    assert losses["bf16"] != losses["fp32"]  # same seed and batches: only the autocast differs


def test_goal_weight_trains_a_goal_head_kept_apart_from_the_model(tmp_path):
    """--goal-weight: the head learns (its loss falls), checkpoints keep it apart (the "model" weights load into a
    plain GatoModel, as export and --init do), resume restores it, and data without layouts stops at once."""
    import torch

    from gato_ros.model.config import GatoConfig
    from gato_ros.model.model import GatoModel

    eps = synthetic_episodes(6, 16, seed=1)
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), steps=30, val_every=30, goal_weight=1.0, **dict(TINY, lr=6e-3)), episodes=eps)
    rows = [r.split(",") for r in (out / "log.csv").read_text().splitlines()]
    col = rows[0].index("goal_loss")
    goal = [float(r[col]) for r in rows[1:]]
    assert np.mean(goal[-5:]) < 0.7 * np.mean(goal[:5]), goal
    ck = load_checkpoint(out)
    assert set(ck["goal_head"]) == {"weight", "bias"} and not any(k.startswith("goal_head") for k in ck["model"])
    GatoModel(GatoConfig.from_dict(ck["config"])).load_state_dict(ck["model"])  # strict: no extra keys
    res = train(TrainConfig(out=str(out), steps=32, val_every=32, goal_weight=1.0, resume=True, **TINY), episodes=eps)
    assert res["step"] == 32
    assert not torch.equal(load_checkpoint(out)["goal_head"]["weight"], ck["goal_head"]["weight"])
    with pytest.raises(ValueError, match="with the goal head; resume it with a --goal-weight"):
        train(TrainConfig(out=str(out), steps=34, resume=True, **TINY), episodes=eps)
    # the bundle keeps the trained head beside the model's weights, and a fine-tune from it starts from that head
    from gato_ros.model.export import export_checkpoint

    ck = load_checkpoint(out)
    export_checkpoint(ck, tmp_path / "bundle", rollout_steps=2)
    kept = load_checkpoint(tmp_path / "bundle" / "model.pt")
    assert all(torch.equal(kept["goal_head"][k], ck["goal_head"][k]) for k in ("weight", "bias"))
    train(TrainConfig(out=str(tmp_path / "ftb"), init=str(tmp_path / "bundle"), steps=1, val_every=1, goal_weight=1.0,
                      **dict(TINY, lr=1e-9, warmup=0)), episodes=eps)
    moved = load_checkpoint(tmp_path / "ftb")["goal_head"]["weight"] - ck["goal_head"]["weight"]
    assert float(moved.abs().max()) < 1e-6  # one step at lr 1e-9 from the kept head (a fresh one is random)
    # fine-tuning: from this run without the head, and from a run without one with a fresh head
    train(TrainConfig(out=str(tmp_path / "ft"), init=str(out), steps=2, val_every=2, **TINY), episodes=eps)
    assert "goal_head" not in load_checkpoint(tmp_path / "ft")
    train(TrainConfig(out=str(tmp_path / "ft2"), init=str(tmp_path / "ft"), steps=2, val_every=2, goal_weight=1.0,
                      **TINY), episodes=eps)
    assert set(load_checkpoint(tmp_path / "ft2")["goal_head"]) == {"weight", "bias"}
    for ep in eps:
        ep.meta = {k: v for k, v in ep.meta.items() if k != "layout"}
    with pytest.raises(ValueError, match="none of the .* training episodes has a sim layout"):
        train(TrainConfig(out=str(tmp_path / "bad"), steps=2, goal_weight=1.0, **TINY), episodes=eps)


def test_resume_continues_from_checkpoint(tmp_path):
    eps = synthetic_episodes(3, 10)
    out = str(tmp_path / "run")
    train(TrainConfig(out=out, steps=4, ckpt_every=2, val_every=4, **TINY), episodes=eps)
    res = train(TrainConfig(out=out, steps=6, ckpt_every=2, val_every=3, resume=True, **TINY), episodes=eps)
    assert res["step"] == 6
    steps = [int(r.split(",")[0]) for r in (Path(out) / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_weights(tmp_path):
    eps = synthetic_episodes(3, 10)
    for name in ("a", "b"):
        train(TrainConfig(out=str(tmp_path / name), steps=2, val_every=2, **TINY), episodes=eps)
    a, b = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_freeze_keeps_matching_parameters_and_trains_the_rest(tmp_path):
    eps = synthetic_episodes(3, 10)
    train(TrainConfig(out=str(tmp_path / "base"), steps=2, val_every=2, **TINY), episodes=eps)
    base = load_checkpoint(tmp_path / "base")["model"]
    train(TrainConfig(out=str(tmp_path / "ft"), init=str(tmp_path / "base"), steps=3, val_every=3,
                      freeze=r"^embed\.|blocks\.0\.", **TINY), episodes=eps)
    ft = load_checkpoint(tmp_path / "ft")["model"]
    frozen = [k for k in base if k.startswith("embed.") or k.startswith("blocks.0.")]
    assert frozen and all(np.array_equal(base[k].numpy(), ft[k].numpy()) for k in frozen)
    trained = [k for k in base if k.startswith("blocks.1.") and k.endswith("weight")]
    assert trained and not any(np.array_equal(base[k].numpy(), ft[k].numpy()) for k in trained)
    for bad, msg in (("nothing_is_called_this", "matches no parameter"), (".", "matches every parameter"),
                     ("(", "not a regular expression")):
        with pytest.raises(ValueError, match=msg):
            train(TrainConfig(out=str(tmp_path / "bad"), init=str(tmp_path / "base"), steps=1, freeze=bad, **TINY),
                  episodes=eps)


def test_time_budget_stops_the_run_and_saves_its_last_step(tmp_path):
    eps = synthetic_episodes(3, 10)
    out = tmp_path / "run"
    res = train(TrainConfig(out=str(out), steps=100_000, minutes=0.03, ckpt_every=100_000, val_every=100_000,
                            **TINY), episodes=eps)
    assert 0 < res["step"] < 100_000  # stopped by the ~2 s budget, not by --steps
    ck = load_checkpoint(out)
    assert ck["step"] == res["step"] and ck["val_loss"] == pytest.approx(res["val_loss"])  # written at the stop
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert int(rows[-1].split(",")[0]) == res["step"] and rows[-1].split(",")[3]  # its validation is logged
    lrs = [float(r.split(",")[1]) for r in rows]
    assert max(lrs) == pytest.approx(TINY["lr"], rel=0.05) and lrs[-1] == pytest.approx(0.1 * TINY["lr"])
    # The schedule follows the budget: past warm-up, the cosine is at the share of the budget spent.
    tc = TrainConfig(steps=100_000, warmup=10, lr=1.0, min_lr_ratio=0.1, minutes=1.0)
    assert lr_at(50, tc, time_frac=0.5) == pytest.approx(0.55) and lr_at(50, tc, time_frac=1.0) == pytest.approx(0.1)


def test_batch_workers_train_like_the_training_process(tmp_path):
    eps = synthetic_episodes(4, 12, seed=2)
    res = train(TrainConfig(out=str(tmp_path / "run"), steps=12, val_every=12, workers=2, **dict(TINY, lr=6e-3)),
                episodes=eps)
    first = float((tmp_path / "run" / "log.csv").read_text().splitlines()[1].split(",")[2])
    assert res["step"] == 12 and res["val_loss"] < first  # batches from the worker processes are trained on
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=-1)


def test_warmup_then_cosine():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(99, tc) == pytest.approx(0.1, abs=1e-3) and lr_at(55, tc) == pytest.approx(0.55, abs=1e-2)


def test_empty_and_mixed_datasets_stop_naming_the_episode(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train(TrainConfig(out=str(tmp_path / "r"), **TINY), episodes=[])
    eps = synthetic_episodes(3, 6)
    eps[1].actions = eps[1].actions[:, :6]
    eps[1].observations["joint_pos"] = eps[1].observations["joint_pos"][:, :6]
    eps[1].observations["joint_vel"] = eps[1].observations["joint_vel"][:, :6]
    with pytest.raises(ValueError, match="episode 1.*differs from episode 0"):
        train(TrainConfig(out=str(tmp_path / "r"), **TINY), episodes=eps)
    assert not (tmp_path / "r").exists()


def _env():
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    return env


def test_cli_train_on_episode_dataset_then_init(tmp_path):
    data = _write_dataset(tmp_path / "data")
    gato = [str(Path(sys.executable).parent / "gato-ros")]
    cmd = gato + ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config", "gato-tiny", "--steps",
                  "3", "--batch-size", "4", "--val-every", "3", "--no-progress", "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env()).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["step"] == 3
    meta = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert meta["robot"]["joint_names"] == [f"j{i}" for i in range(7)]
    assert meta["robot"]["joint_limits"][6] == [0.0, 0.05]
    # fine-tune from the checkpoint
    cmd2 = gato + ["train", "--data", str(data), "--out", str(tmp_path / "ft"), "--init", str(tmp_path / "run"),
                   "--steps", "2", "--batch-size", "4", "--val-every", "2", "--no-progress", "--json"]
    subprocess.run(cmd2, check=True, capture_output=True, text=True, env=_env())
    # --task-share names a task of the data as TASK=P; anything else stops before training, saying why
    for share, msg in (("reach", "expected TASK=P"), ("pick_place=0.5", "no episode of that task")):
        bad = subprocess.run(cmd2 + ["--task-share", share], capture_output=True, text=True, env=_env())
        assert bad.returncode != 0 and msg in bad.stderr, bad.stderr[-2000:]


def test_torchrun_two_cpu_processes(tmp_path):
    data = _write_dataset(tmp_path / "data", n=3, steps=8)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [torchrun, "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           str(Path(sys.executable).parent / "gato-ros"), "train", "--data", str(data), "--out", str(tmp_path / "run"),
           "--config", "gato-tiny", "--steps", "2", "--batch-size", "2", "--val-every", "2", "--no-progress", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "run")
    assert ck["world_size"] == 2 and ck["step"] == 2
