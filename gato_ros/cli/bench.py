"""`gato-ros bench`: time one control tick (runtime policy) against HF GPT-2 with KV cache and a naive torch
recompute loop of the same size, with a per-phase breakdown and the machine's physical bound.

    gato-ros bench --model models/gato_arm_small --json
    gato-ros bench --config gato-79m --ticks 30 --peer-ticks 5 --recompute-ticks 1 --json
    gato-ros bench --config gato-small --history-steps 2 --no-peers --json   # shorter context, same tick
    gato-ros bench --ros --ros-image 1280x720 --json   # + the policy node's tick: conversion, model, publish

Measured rows and their commands: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="BUNDLE", help="bundle directory (default: models/gato_arm_small if present)")
    src.add_argument("--config", metavar="NAME", help="model preset: randomly initialised, exported to a temp bundle")
    parser.add_argument("--ticks", type=int, default=200, help="timed runtime ticks (default %(default)s)")
    parser.add_argument("--peer-ticks", type=int, default=30, help="timed HF GPT-2 ticks (default %(default)s)")
    parser.add_argument("--recompute-ticks", type=int, default=5, help="timed torch recompute ticks")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for all contenders (0: up to 2)")
    parser.add_argument("--execution-provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"])
    parser.add_argument("--kv-device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the KV cache lives: auto = GPU memory when the model runs on a GPU and CuPy is "
                             "installed, else host memory (copied to the GPU on every call)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                        help="with --config: weights of the exported random model (default %(default)s)")
    parser.add_argument("--data", action="append", metavar="DIR",
                        help="replay the observations of these episode datasets (realistic inputs; default: random)")
    parser.add_argument("--sequential", action="store_true",
                        help="decode the action tokens one call each instead of exact Jacobi iteration")
    parser.add_argument("--history-steps", type=int, metavar="H",
                        help="each timed tick sees exactly H cached timesteps (0..window; default: a full window, "
                             "the steady state): the tick-versus-context-length table")
    parser.add_argument("--no-peers", action="store_true", help="time the runtime only")
    parser.add_argument("--ros", action="store_true",
                        help="also time the policy node's tick (rclpy, in this process): camera and joint-state "
                             "conversion, the model, building and publishing the command (JSON key \"ros\")")
    parser.add_argument("--ros-image", default=(640, 480), type=_frame_size, metavar="WxH",
                        help="camera frame size for --ros, rgb8 (default 640x480; the node resizes to the bundle's "
                             "size)")
    parser.add_argument("--command-interface", default="position_array", choices=["position_array", "joint_trajectory"],
                        help="command message for --ros (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _frame_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return w, h


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from gato_ros.bench import run_benchmark

    model = args.model
    if model is None and args.config is None:
        default = Path("models/gato_arm_small")
        if not (default / "gato.json").is_file():
            raise SystemExit("no --model or --config given and models/gato_arm_small is missing; "
                             "pass --config gato-small to time a random model of the shipped size")
        model = str(default)
    ros = {"image_size": args.ros_image, "command_interface": args.command_interface} if args.ros else None
    bar = tqdm(total=None, desc="bench", disable=args.json, bar_format="{desc}: {postfix}")

    def progress(msg: str) -> None:
        bar.set_postfix_str(msg)

    res = run_benchmark(model, args.config, args.ticks, args.peer_ticks, args.recompute_ticks,
                        args.threads or None, args.execution_provider, not args.no_peers, progress, args.precision,
                        not args.sequential, args.data, args.history_steps, args.kv_device, ros)
    bar.close()
    if args.json:
        print(json.dumps(res))
    else:
        t = res["tick_ms"]
        print(f"{res['model']} on {res['provider']} ({res['threads']} threads): tick p50 {t['p50']:.2f} ms, "
              f"p99 {t['p99']:.2f} ms, {res['tokens_per_tick']} tokens / {res['graph_calls_per_tick']} calls "
              f"({res['decoding']} decoding)")
        print(f"  breakdown (p50 ms): {res['breakdown_ms']}")
        if "peers" in res:
            p = res["peers"]
            print(f"  HF GPT-2 KV cache: p50 {p['hf_transformers_kv']['p50']:.2f} ms, p99 "
                  f"{p['hf_transformers_kv']['p99']:.2f} ms -> speedup {res['speedup_vs_hf']}x")
            print(f"  torch recompute: p50 {p['torch_recompute']['p50']:.2f} ms")
        print(f"  bound {res['bound_ms']:.2f} ms (fraction {res['bound_fraction']}); machine {res['machine']}")
        if "ros" in res:
            r, img = res["ros"], res["ros"]["image"]
            print(f"  policy node tick ({img['width']}x{img['height']} {img['encoding']}, {r['command_interface']}): "
                  f"p50 {r['tick_ms']['p50']:.2f} ms, p99 {r['tick_ms']['p99']:.2f} ms; breakdown (p50 ms): "
                  f"{r['breakdown_ms']}")
    return 0
