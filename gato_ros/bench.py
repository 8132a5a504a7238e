"""Control-tick benchmark: the runtime policy against two torch peers of the same size, in one run.

One tick = tokenize the observation + prefill its tokens (with the previous tick's last action) + 6 single-token
decodes + detokenize: 38 tokens, 7 graph calls, with the context already holding a full window of history.

Peers (same layers, width, heads, FF, vocabulary and context; torch eager, batch 1, same thread count):
- `hf_transformers_kv`: Hugging Face `GPT2LMHeadModel` with its KV cache and its default attention (SDPA in
  transformers 5; `attn_implementation` in the result): one forward of the tick's 38 tokens, then 6 one-token
  forwards, greedy; the cache is cropped back after each tick so every tick sees the same history. (Until
  2026-12-01 it was forced to the eager attention, 3-7% slower on the 2-core CPU: speedups in BENCHMARKS.md before
  that date are that much higher than against the default.)
- `torch_recompute`: our torch model recomputing the whole context for every action token (7 full forwards).

The physical bound (issue 9): weights streamed from memory once per decode call, plus the prefill's FLOPs at the
measured matrix-multiply rate (ONNX Runtime's own kernel, same precision and threads; the bandwidth is the best of
two bursts of 128 MiB copies, before and after the timed ticks):
`bound_ms = decodes * weight_bytes / mem_bw + prefill_flops / matmul_flops`; `bound_fraction = bound_ms / p50`.
Weights small enough to stay in the last-level cache can beat the memory term, so a fraction above 1 means the
tick is at the hardware limit by this measure.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _pct(xs_s: list[float]) -> dict[str, float]:
    a = np.asarray(xs_s) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "mean": round(float(a.mean()), 3)}


def memory_bandwidth(copies: int = 10) -> float:
    """The best of `copies` 128 MiB copies, in GB/s (read + write counted)."""
    src = np.ones(32 * 2**20, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return 2 * src.nbytes / min(_timed(lambda: np.copyto(dst, src)) for _ in range(copies)) / 1e9


def machine_limits(threads: int, precision: str = "fp32", bw_before: float | None = None) -> dict[str, float]:
    """Measured memory bandwidth (GB/s) and ONNX Runtime's matmul rate (GFLOP/s) for a 256 x 1024 @ 1024 x 1024
    product with `precision` weights at `threads` threads -- the kernels a tick uses.

    The bandwidth is the best of `memory_bandwidth()` now and `bw_before` (taken before the timed ticks): on a
    shared VM it drifts by up to a third within seconds (neighbours' traffic), and the machine's limit is its best;
    a single burst made the bound, and with it bound_fraction, move by +-20% between runs of the same code."""
    bw_now = memory_bandwidth()
    bw = max(bw_now, bw_before or 0.0)
    m, n = 256, 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = _matmul_graph(Path(tmp), n, precision)
        from gato_ros.runtime import inference_session, session_options

        sess = inference_session(path, session_options(threads), ["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((m, n), dtype=np.float32)
        x = x.astype(np.float16) if precision == "fp16" else x
        sess.run(None, {"x": x})
        mm = min(_timed(lambda: sess.run(None, {"x": x})) for _ in range(20))
    return {"mem_bw_gbs": round(bw, 2), "mem_bw_samples_gbs": [round(b, 2) for b in (bw_before, bw_now) if b],
            "matmul_gflops": round(2 * m * n * n / mm / 1e9, 1)}


def gpu_limits(precision: str = "fp32") -> dict[str, Any]:
    """The GPU's measured memory bandwidth (GB/s, 1 GiB device copy: read + write) and matmul rate (GFLOP/s, 4096^3
    through cuBLAS, in fp16 for an fp16 bundle, else fp32), via CuPy (present whenever the runtime keeps its cache
    on the GPU)."""
    import cupy as cp

    def timed(fn, reps: int) -> float:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        fn()
        best = float("inf")
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, end) / 1e3)
        return best

    src = cp.ones(2**28, cp.float32)
    dst = cp.empty_like(src)
    bw = 2 * src.nbytes / timed(lambda: cp.copyto(dst, src), 10) / 1e9
    del src, dst
    n = 4096
    a = cp.random.default_rng(0).standard_normal((n, n), dtype=cp.float32)
    a = a.astype(cp.float16) if precision == "fp16" else a
    mm = timed(lambda: a @ a, 10)
    return {"mem_bw_gbs": round(bw, 1), "matmul_gflops": round(2 * n**3 / mm / 1e9, 1),
            "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}


def _matmul_graph(tmp: Path, n: int, precision: str) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp / "mm.onnx"
    onnx.save(model, str(path))
    if precision == "int8":
        from gato_ros.model.quantize import quantize_int8

        quantize_int8(path, tmp / "mm8.onnx")
        return tmp / "mm8.onnx"
    if precision == "fp16":
        from gato_ros.model.quantize import convert_fp16

        convert_fp16(path, tmp / "mm16.onnx")
        return tmp / "mm16.onnx"
    return path


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_costs(cfg, precision: str = "fp32") -> dict[str, float]:
    """Bytes of weights read per graph call and FLOPs of a tick's prefill (the observation + 1 tokens)."""
    d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    block = 4 * d * d + 2 * d * f  # matmul weights per block
    weights = L * block + d * cfg.tokenizer.num_bins
    prefill_tokens = cfg.observation_tokens + 1
    ctx = cfg.context_tokens
    attn = L * 2 * 2 * prefill_tokens * ctx * d  # scores + weighted values
    per = {"int8": 1.0, "fp16": 2.0}.get(precision, 4.0)  # bytes per weight
    return {"weight_bytes": per * weights, "prefill_flops": 2.0 * weights * prefill_tokens + attn}


def replay_observations(paths: list[str], limit: int = 2000) -> tuple[list[dict], str]:
    """Consecutive observations (and the first instruction) of recorded episodes: a realistic input stream,
    which matters for parallel decoding (its guesses come from the previous tick)."""
    from gato_ros.dataset import EpisodeDataset

    obs: list[dict] = []
    instruction = ""
    for p in paths:
        for ep in EpisodeDataset(p):
            instruction = instruction or ep.instruction
            T = len(ep.actions)
            obs += [{k: np.asarray(v[t]) for k, v in ep.observations.items()} for t in range(T)]
            if len(obs) >= limit:
                return obs[:limit], instruction
    if not obs:
        raise ValueError(f"--data {paths}: no episodes to replay")
    return obs, instruction


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine skews every timing; reported with them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def bench_runtime(policy, ticks: int, warmup: int, seed: int = 0, replay: tuple[list[dict], str] | None = None,
                  history: int | None = None) -> dict[str, Any]:
    """Time `ticks` control ticks after filling the context with `warmup` (>= window) ticks. Inputs: `replay`
    (observations, instruction) if given, else 8 random observations in turn.

    `history` = h: every timed tick instead sees exactly h cached timesteps (new episode, h untimed ticks, one
    timed tick), for the tick-versus-context-length table."""
    cfg = policy.cfg
    rng = np.random.default_rng(seed)
    spec = cfg.spec
    if replay is not None:
        obs, instruction = replay
    else:
        obs = [{"image": rng.integers(0, 256, spec.image_shape, dtype=np.uint8),
                **{k: rng.normal(scale=0.5, size=int(spec.continuous[k])) for k in spec.continuous_keys}}
               for _ in range(8)]
        instruction = "pick up the red cube and put it in the bin"
    n_obs = len(obs)
    policy.set_instruction(instruction)
    for i in range(warmup):
        policy.act(obs[i % n_obs])
    tm: list[dict] = []
    calls = 0
    for i in range(ticks):
        if history is not None:
            policy.reset()
            for j in range(history):
                policy.act(obs[(i + j) % n_obs])
        cached = int((policy._prefix_mask == 0).sum() + (policy._ring_step >= 0).sum())
        calls0, policy.timings = policy.graph_calls, tm
        policy.act(obs[(i + (history or 0)) % n_obs])
        calls += policy.graph_calls - calls0
        policy.timings = None
    each = [d for t in tm for d in t["decode"]]
    return {
        "tick": _pct([t["tick"] for t in tm]),
        "cpu": _pct([t["cpu"] for t in tm]),
        "graph_calls_per_tick": round(calls / ticks, 3),
        "breakdown_ms": {
            "tokenize": _pct([t["tokenize"] for t in tm])["p50"],
            "prefill": _pct([t["prefill"] for t in tm])["p50"],
            "decode_calls_per_tick": round(len(each) / ticks, 3),
            "decode_each": _pct(each)["p50"] if each else 0.0,
            "decode_total": _pct([sum(t["decode"]) for t in tm])["p50"],
            "detokenize": _pct([t["detokenize"] for t in tm])["p50"],
        },
        "cached_tokens": cached,  # prefix + ring slots holding keys/values when the (last) timed tick started
    }


def bench_hf(cfg, cached: int, ticks: int, warmup: int = 3) -> dict[str, float]:
    """HF GPT-2 (default attention, KV cache, batch 1) of the same size: the tick's 38-token forward + 6
    single-token forwards."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_tokens + 64, n_embd=cfg.d_model,
                    n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(hc).eval()  # HF's default attention, as a user would run it
    g = torch.Generator().manual_seed(0)
    history = torch.randint(0, cfg.vocab_size, (1, cached), generator=g)
    new = torch.randint(0, cfg.vocab_size, (1, cfg.observation_tokens + 1), generator=g)
    n_dec = cfg.spec.action_size - 1
    times = []
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers 5 deprecation notices about the cache argument name
        past = model(history, use_cache=True).past_key_values
        for i in range(warmup + ticks):
            t0 = time.perf_counter()
            out = model(new, past_key_values=past, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(n_dec):
                out = model(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            dt = time.perf_counter() - t0
            past = out.past_key_values
            past.crop(-(new.shape[1] + n_dec))  # transformers 5: a negative value removes that many tokens
            if i >= warmup:
                times.append(dt)
    return {**_pct(times), "attn_implementation": str(model.config._attn_implementation)}


def bench_torch_recompute(cfg, ticks: int) -> dict[str, float]:
    """Our model in torch, recomputing the whole context (prefix + window) for each of the 7 action tokens."""
    import torch

    from gato_ros.model.export import random_episode
    from gato_ros.model.model import GatoModel
    from gato_ros.sequence import UNPOSITIONED_KEYS, ContextBuilder

    torch.manual_seed(0)
    model = GatoModel(cfg).eval()
    ctx = ContextBuilder(cfg)
    K = cfg.window_steps
    obs = random_episode(cfg, K, 0)
    steps = ctx.tok.tokenize_steps(obs, np.zeros((K, cfg.spec.action_size)), cfg.spec)
    text = "pick up the red cube and put it in the bin"
    full = {k: torch.from_numpy(v)[None] for k, v in ctx.build(ctx.text_ids(text), steps, 100,
                                                                text_feat=ctx.text_features(text)).items()}
    n_valid = int(full["valid"].sum())
    keep = full["valid"][0]
    full = {k: (v[0] if k == "patches" else v if k in UNPOSITIONED_KEYS else v[:, keep])
            for k, v in full.items()}
    last = n_valid - cfg.spec.action_size  # position of the separator of the newest step
    times = []
    with torch.inference_mode():
        for i in range(ticks + 1):
            t0 = time.perf_counter()
            for j in range(cfg.spec.action_size):
                upto = last + j + 1
                n_img = int(full["is_image"][:, :upto].sum())
                h = model.hidden({k: (v[:n_img] if k == "patches" else v if k in UNPOSITIONED_KEYS
                                      else v[:, :upto]) for k, v in full.items()})
                model.head(h[:, -1]).argmax(-1)
            if i:
                times.append(time.perf_counter() - t0)
    return _pct(times)


def run_benchmark(bundle_dir: str | Path | None = None, config: str | None = None, ticks: int = 200,
                  peer_ticks: int = 30, recompute_ticks: int = 5, threads: int | None = None,
                  execution_provider: str = "auto", peers: bool = True, progress=None,
                  precision: str = "fp32", jacobi: bool = True, data: list[str] | None = None,
                  history_steps: int | None = None, kv_device: str = "auto",
                  ros: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DESIGN.md `bench` JSON for a bundle, or for a randomly initialised preset exported to a temp bundle.

    `ros` (e.g. {"image_size": (640, 480), "command_interface": "position_array"}): also time the policy node's
    tick with message conversion and publish (`gato_ros.ros.bench_ros`; needs rclpy), as result["ros"]."""
    from gato_ros.runtime import GPU_PROVIDERS, RuntimePolicy

    threads = threads or min(os.cpu_count() or 1, 2)
    say = progress or (lambda msg: None)
    tmp = None
    if bundle_dir is None:
        if config is None:
            raise ValueError("give a bundle directory or a config preset name")
        say(f"export random {config}")
        tmp = tempfile.TemporaryDirectory(prefix="gato_bench_")
        bundle_dir = Path(tmp.name) / config
        export_random(config, bundle_dir, precision=precision)
    try:
        policy = RuntimePolicy.load(bundle_dir, execution_provider=execution_provider, threads=threads,
                                    kv_device=kv_device)
        policy.jacobi = jacobi
        cfg = policy.cfg
        if history_steps is not None and not 0 <= history_steps <= cfg.window_steps:
            raise ValueError(f"history_steps={history_steps}: choose 0..{cfg.window_steps} (the model's window)")
        bw0 = memory_bandwidth()  # the bound's bandwidth: the best of this and one after the timing
        say("time runtime")
        load0 = load_average()
        replay = replay_observations(data, ticks + cfg.window_steps + 2) if data else None
        ours = bench_runtime(policy, ticks, warmup=cfg.window_steps + 2, replay=replay, history=history_steps)
        result: dict[str, Any] = {
            "model": cfg.name,
            "precision": policy.bundle.meta.get("precision", "fp32"),
            "bundle": None if tmp else str(bundle_dir),
            "provider": policy.provider,
            "kv_cache": policy.kv_device,
            "threads": threads,
            "tokens_per_tick": cfg.step_tokens,
            "graph_calls_per_tick": ours["graph_calls_per_tick"],
            "decoding": "jacobi" if policy.jacobi else "sequential",
            "inputs": f"replayed episodes from {', '.join(data)}" if data else "8 random observations in turn",
            "context_tokens": cfg.context_tokens,
            "cached_tokens": ours["cached_tokens"],
            "history_steps": cfg.window_steps if history_steps is None else history_steps,
            "tick_ms": ours["tick"],
            # CPU time of the process per tick: immune to being preempted on a loaded machine, not to sharing caches
            # and memory bandwidth; with 2 threads it includes the ONNX Runtime workers' spinning
            "tick_cpu_ms": ours["cpu"],
            "breakdown_ms": ours["breakdown_ms"],
        }
        if peers:
            import torch

            torch.set_num_threads(threads)
            say("time hf_transformers_kv")
            hf = bench_hf(cfg, ours["cached_tokens"], peer_ticks)
            say("time torch_recompute")
            rc = bench_torch_recompute(cfg, recompute_ticks)
            result["peers"] = {"hf_transformers_kv": hf, "torch_recompute": rc}
            result["speedup_vs_hf"] = round(hf["p50"] / ours["tick"]["p50"], 2)
            result["speedup_vs_hf_p99"] = round(hf["p99"] / ours["tick"]["p99"], 2)
        if ros is not None:
            from gato_ros.ros.bench_ros import bench_ros_tick

            say("time the policy node's tick")
            result["ros"] = bench_ros_tick(policy, ticks, warmup=cfg.window_steps + 2, **ros)
        say("measure machine")
        # On a GPU the limits are the GPU's (measured through CuPy, which a GPU-resident cache needs anyway); without
        # CuPy they are the CPU's, and `machine.limits_of` says so.
        on_gpu = policy.provider in GPU_PROVIDERS
        try:
            lim = dict(gpu_limits(result["precision"]), limits_of="gpu") if on_gpu else None
        except ImportError:
            lim = None
        lim = lim or dict(machine_limits(threads, result["precision"], bw0), limits_of="cpu")
        costs = model_costs(cfg, result["precision"])
        decodes = cfg.spec.action_size - 1  # the bound of sequential decoding, as issue 9 defines it
        bound = (decodes * costs["weight_bytes"] / (lim["mem_bw_gbs"] * 1e9)
                 + costs["prefill_flops"] / (lim["matmul_gflops"] * 1e9)) * 1e3
        result.update({
            "bound_ms": round(bound, 3),
            "bound_fraction": round(bound / ours["tick"]["p50"], 3),
            "machine": {**lim, "cpu": cpu_model(), "cores": os.cpu_count(),
                        "load_avg_start": load0, "load_avg_end": load_average(),
                        "weight_mb": round(costs["weight_bytes"] / 1e6, 2),
                        "prefill_gflop": round(costs["prefill_flops"] / 1e9, 3)},
            "ticks": ticks,
        })
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def export_random(config: str, out: Path, seed: int = 0, precision: str = "fp32") -> None:
    """A randomly initialised preset as a bundle (graph checks on random inputs; no rollout check)."""
    import torch

    from gato_ros.model.config import preset
    from gato_ros.model.export import export_checkpoint
    from gato_ros.model.model import GatoModel
    from gato_ros.sequence import ActionNormalizer

    torch.manual_seed(seed)
    cfg = preset(config)
    model = GatoModel(cfg)
    A = cfg.spec.action_size
    ckpt = {"model": model.state_dict(), "config": cfg.to_dict(),
            "normalizer": ActionNormalizer("delta", -0.1 * np.ones(A), 0.1 * np.ones(A)).to_dict(),
            "git_commit": "random-init"}
    export_checkpoint(ckpt, out, name=f"{config}-random", rollout_steps=0, precision=precision)
