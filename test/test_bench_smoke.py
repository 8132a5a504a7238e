"""`gato-ros bench` output contract (DESIGN.md) on the tiny preset: all contenders timed in one run."""
import json
import subprocess
import sys
from pathlib import Path

from gato_ros.bench import model_costs
from gato_ros.dataset import Episode, write_episode
from gato_ros.model.data import synthetic_episodes
from gato_ros.model.config import preset


def test_bench_config_json_contract(tmp_path):
    for ep in synthetic_episodes(2, 20):  # replayed observations (--data): realistic consecutive inputs
        meta = {"joint_names": ep.meta["joint_names"], "joint_limits": [[-3.0, 3.0]] * 7, "control_rate_hz": 20.0,
                "image_size": 64}
        write_episode(tmp_path, Episode(ep.observations, ep.actions, ep.instruction, ep.task, ep.seed, True, meta))
    gato = str(Path(sys.executable).parent / "gato-ros")
    out = subprocess.run([gato, "bench", "--config", "gato-tiny", "--ticks", "20", "--peer-ticks", "3",
                          "--recompute-ticks", "1", "--threads", "1", "--data", str(tmp_path), "--json"], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["inputs"].startswith("replayed episodes") and r["decoding"] == "jacobi"
    assert r["provider"] == "CPUExecutionProvider" and r["model"] == "gato-tiny"
    assert r["tokens_per_tick"] == 38 and 1 <= r["graph_calls_per_tick"] <= 7
    for key in ("p50", "p99"):
        assert 0 < r["tick_ms"][key] and 0 < r["peers"]["hf_transformers_kv"][key]
    assert r["tick_ms"]["p50"] <= r["tick_ms"]["p99"] and r["tick_cpu_ms"]["p50"] > 0
    assert r["peers"]["torch_recompute"]["p50"] > 0
    from transformers import GPT2Config, GPT2LMHeadModel  # the HF peer runs HF's default attention, as users do

    default = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).config._attn_implementation
    assert r["peers"]["hf_transformers_kv"]["attn_implementation"] == default
    assert abs(r["speedup_vs_hf"] - r["peers"]["hf_transformers_kv"]["p50"] / r["tick_ms"]["p50"]) < 0.02 * r[
        "speedup_vs_hf"] + 0.01
    b = r["breakdown_ms"]
    assert 0 <= b["decode_calls_per_tick"] <= 6 and b["prefill"] > 0 and b["tokenize"] > 0
    assert r["cached_tokens"] > preset("gato-tiny").ring_slots // 2  # the context holds a full window of history
    assert r["bound_ms"] > 0 and r["bound_fraction"] > 0 and r["machine"]["mem_bw_gbs"] > 0
    samples = r["machine"]["mem_bw_samples_gbs"]  # before and after the timed ticks; the bound takes the best
    assert len(samples) == 2 and r["machine"]["mem_bw_gbs"] == max(samples)
    assert r["machine"]["cpu"] and len(r["machine"]["load_avg_start"]) == 3  # where and under what load
    # Tick versus context length: each timed tick sees exactly one cached timestep (plus the instruction); and the
    # fp16 variant's graphs, cache and bound (2-byte weights).
    short = json.loads(subprocess.run([gato, "bench", "--config", "gato-tiny", "--ticks", "5", "--threads", "1",
                                       "--history-steps", "1", "--no-peers", "--precision", "fp16", "--json"],
                                      check=True, capture_output=True, text=True,
                                      timeout=600).stdout.strip().splitlines()[-1])
    assert short["history_steps"] == 1 and "peers" not in short and short["precision"] == "fp16"
    assert abs(short["machine"]["weight_mb"] - model_costs(preset("gato-tiny"))["weight_bytes"] / 2e6) < 0.006
    assert 38 - 1 < short["cached_tokens"] <= preset("gato-tiny").prefix_slots + 38 - 1  # its last action pends


def test_model_costs_scale_with_size():
    small, big = model_costs(preset("gato-small")), model_costs(preset("gato-79m"))
    assert 12e6 < small["weight_bytes"] < 15e6  # 3.4M matmul weights, fp32
    assert big["weight_bytes"] > 15 * small["weight_bytes"]
    for precision, size in (("fp16", 2), ("int8", 1)):  # bytes per weight
        assert model_costs(preset("gato-small"), precision)["weight_bytes"] == small["weight_bytes"] * size / 4


def test_bench_ros_times_the_policy_node_tick():
    """--ros: the policy node's own tick on a real rclpy node, camera frames of the size asked for, every tick a
    command that reaches a subscriber over DDS, and a breakdown whose parts fit inside the tick."""
    import pytest

    pytest.importorskip("rclpy", reason="bench --ros needs rclpy (pip install -e '.[ros]')")
    gato = str(Path(sys.executable).parent / "gato-ros")
    out = subprocess.run([gato, "bench", "--config", "gato-tiny", "--ticks", "20", "--threads", "1", "--no-peers",
                          "--ros", "--ros-image", "320x240", "--command-interface", "joint_trajectory", "--json"],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    r = json.loads(out.strip().splitlines()[-1])["ros"]
    assert r["image"] == {"width": 320, "height": 240, "encoding": "rgb8", "bytes": 320 * 240 * 3}
    assert r["command_interface"] == "joint_trajectory" and r["ticks"] == 20
    assert r["commands_delivered"] == 10  # the listener's queue depth: the commands went out over DDS
    b = r["breakdown_ms"]
    assert b["convert_inputs"] > 0 and b["policy_act"] > 0 and b["publish_command"] > 0 and b["other"] >= 0
    assert b["convert_inputs"] + b["policy_act"] + b["publish_command"] <= r["tick_ms"]["p99"]
    assert 0 < r["tick_ms"]["p50"] <= r["tick_ms"]["p99"] <= r["tick_ms"]["max"]
    bad = subprocess.run([gato, "bench", "--config", "gato-tiny", "--ros", "--ros-image", "320", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "WIDTHxHEIGHT" in bad.stderr
