"""`gato-ros demo` (what `make demo` runs): the sim and the policy node over real ROS 2 transport with the shipped
model, a few episodes across tasks.

    gato-ros demo [--model DIR] [--episodes N] [--task T ...] [--out DIR] [--json]

Starts `gato_sim` and `gato_policy` as separate processes (the graph of arm.launch.py, via gato_ros.ros.launcher),
drives episodes from a client node (disable -> new task -> enable -> wait for success or the step budget), and
writes into --out:

- `demo.mp4`: the camera view (upscaled) with the instruction, step and success drawn on it;
- `latency.png`: the policy node's tick latency and image-to-command latency over time;
- `demo.json`: the table below plus the latency summary and the bundle used.

Prints a table (task, instruction, success, steps, tick p50/p99). With no shipped bundle it runs whatever bundle
it finds under models/ and says so loudly; with none it stops and says how to make one. Nothing is faked.
"""
from __future__ import annotations

import argparse

DEFAULT_SEED = 1_000_000  # the held-out layouts `gato-ros eval` uses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="model bundle (default: models/gato_arm_small)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes in all, alternating tasks (default 4)")
    parser.add_argument("--task", action="append", metavar="T", help="task(s) to show (repeatable; default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"sim seed of the first round (default {DEFAULT_SEED})")
    parser.add_argument("--out", default="out/demo", metavar="DIR", help="where the video, plot and JSON go (default out/demo)")
    parser.add_argument("--no-video", action="store_true", help="skip the MP4")
    parser.add_argument("--execution-provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                        help="ONNX Runtime provider (default auto: the fastest one that starts)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def find_bundle(requested: str | None) -> tuple[str, str | None]:
    """(bundle dir, warning or None). The shipped bundle, else any bundle under models/ (with a warning)."""
    from pathlib import Path

    from gato_ros.ros.graph import DEFAULT_MODEL, share_path

    if requested:
        if not (Path(requested) / "gato.json").is_file():
            raise SystemExit(f"gato-ros demo: --model {requested!r} is not a model bundle (no gato.json)")
        return requested, None
    shipped = share_path(DEFAULT_MODEL)
    if (shipped / "gato.json").is_file():
        return str(shipped), None
    others = sorted(p.parent for p in share_path("models").glob("*/gato.json"))
    if not others:
        raise SystemExit(
            f"gato-ros demo: no model bundle: {shipped} is missing and models/ holds no other bundle. Train and "
            "export one (gato-ros train ... && gato-ros export --checkpoint RUN --out models/gato_arm_small), "
            "or pass --model DIR"
        )
    return str(others[0]), (
        f"the shipped model {shipped} is missing: running with {others[0]} instead. Its results are that "
        "bundle's, not the shipped model's."
    )


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from gato_ros.cli.collect import resolve_tasks
    from gato_ros.evaluation import percentiles

    if args.episodes < 1:
        raise SystemExit("--episodes must be >= 1")
    bundle, warning = find_bundle(args.model)
    if warning:
        banner = "!" * 100
        print(f"{banner}\nWARNING: {warning}\n{banner}", file=sys.stderr, flush=True)
    tasks = resolve_tasks(args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import rclpy

    from gato_ros.ros.eval_ros import (GraphClient, GraphError, bundle_facts, close_video, episode_timeout,
                                       graph_arguments)
    from gato_ros.ros.launcher import GraphProcesses

    facts = bundle_facts(bundle)
    rate = facts["control_rate_hz"]
    model = _model_summary(facts["meta"])
    if not args.json:
        print(f"model: {model}", flush=True)
    video = None
    if not args.no_video:
        from gato_ros.sim.video import VideoWriter, annotate, upscale

        video = VideoWriter(out / "demo.mp4", fps=rate)

        def on_frame(rgb, ep):
            video.append(annotate(upscale(rgb, 256), ep.get("instruction", ""), success=ep.get("success"),
                                  step=ep.get("step")))
    else:
        on_frame = None

    bar = None
    if not args.no_progress and not args.json:
        from tqdm import tqdm

        bar = tqdm(total=args.episodes, unit="ep", desc="demo", leave=False)
    rows, records = [], []
    rclpy.init()
    graph = GraphProcesses(graph_arguments(bundle, args.execution_provider), echo=False, log_dir=out / "logs")
    client = None
    started = time.perf_counter()
    try:
        graph.start()
        client = GraphClient(on_frame=on_frame)
        client.wait_ready(graph)
        for i in range(args.episodes):
            task = tasks[i % len(tasks)]
            seed = args.seed + i // len(tasks)
            rec = client.run_episode(task, seed, episode_timeout(task, rate), graph)
            records.append(rec)
            tick = percentiles(rec.tick_ms)
            rows.append({"task": task, "instruction": rec.instruction, "seed": seed, "success": rec.success,
                         "steps": rec.steps, "tick_ms_p50": tick["p50"], "tick_ms_p99": tick["p99"],
                         "clamped": rec.clamped})
            if bar is not None:
                bar.update(1)
        diagnostics = client.diagnostics()
    except GraphError as exc:
        raise SystemExit(f"gato-ros demo: {exc}\n(node logs: {graph.log_dir})") from None
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        graph.stop()
        rclpy.try_shutdown()
        if video is not None:
            close_video(video)

    all_ticks = [t for r in records for t in r.tick_ms]
    all_e2e = [t for r in records for t in r.image_to_command_ms]
    plot = out / "latency.png"
    _plot_latency(records, plot, rate)
    result = {
        "bundle": str(bundle),
        "model": model,
        "warning": warning,
        "provider": diagnostics.get("provider"),
        "episodes": rows,
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "tick_ms": percentiles(all_ticks),
        "image_to_command_ms": percentiles(all_e2e),
        "deadline_misses": diagnostics.get("deadline_misses"),
        # commands the policy node's safety filter changed (joint limits, per-tick step limits), of all commands
        "clamped_commands": sum(r.clamped for r in records),
        "commands": len(all_ticks),
        "control_rate_hz": rate,
        "wall_s": time.perf_counter() - started,
        "video": str(out / "demo.mp4") if video is not None else None,
        "latency_plot": str(plot),
        "transport": "ros2 (" + ", ".join(s.name for s in graph.specs) + " as processes)",
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    graph.close()
    if args.json:
        print(json.dumps(result))
        return 0
    print(_table(rows))
    t, e = result["tick_ms"], result["image_to_command_ms"]
    print(f"\nsuccess {sum(r['success'] for r in rows)}/{len(rows)}; provider {result['provider']}; "
          f"policy tick p50 {_ms(t['p50'])} p99 {_ms(t['p99'])} ms; image->command p50 {_ms(e['p50'])} "
          f"p99 {_ms(e['p99'])} ms at {rate:g} Hz; {result['clamped_commands']} of {result['commands']} commands "
          "clamped by the safety filter's joint/step limits")
    if warning:
        print(f"WARNING: {warning}")
    print(f"wrote {result['video'] or '(no video)'}, {plot}, {out / 'demo.json'}")
    return 0


def _model_summary(meta: dict) -> str:
    """One line on what the bundle is: its name, architecture and training provenance (from gato.json)."""
    prov = meta.get("provenance") or {}
    data = prov.get("data") or []
    steps = prov.get("step")
    trained = f"trained {steps} steps on {len(data)} dataset(s)" if steps else "untrained (no training steps recorded)"
    init = (prov.get("train_config") or {}).get("init")
    if steps and init:  # the last run continued another model's weights: its steps are not the whole training
        trained = f"fine-tuned {steps} steps from {init} on {len(data)} dataset(s)"
    return f"{meta.get('name', '?')} ({(meta.get('model') or {}).get('name', '?')}), {trained}"


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _table(rows: list[dict]) -> str:
    head = ["#", "task", "instruction", "success", "steps", "tick p50 ms", "tick p99 ms", "clamped"]
    body = [[str(i), r["task"], r["instruction"], "yes" if r["success"] else "no", str(r["steps"]),
             _ms(r["tick_ms_p50"]), _ms(r["tick_ms_p99"]), str(r["clamped"])] for i, r in enumerate(rows)]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def _plot_latency(records, path, rate: float) -> None:
    """Tick latency (and image-to-command latency) per commanded tick, episodes shaded, the period as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    x0 = 0
    for i, r in enumerate(records):
        xs = range(x0, x0 + len(r.tick_ms))
        ax.plot(xs, r.tick_ms, color="tab:blue", lw=0.8, label="policy tick" if i == 0 else None)
        if r.image_to_command_ms and len(r.image_to_command_ms) == len(r.tick_ms):
            ax.plot(xs, r.image_to_command_ms, color="tab:orange", lw=0.8,
                    label="image stamp -> command" if i == 0 else None)
        if i % 2:
            ax.axvspan(x0, x0 + len(r.tick_ms), color="0.93")
        ax.text(x0 + 1, 0.97, f"{r.task}{' ok' if r.success else ''}", transform=ax.get_xaxis_transform(),
                fontsize=7, va="top")
        x0 += len(r.tick_ms)
    ax.axhline(1000.0 / rate, color="tab:red", ls="--", lw=0.8, label=f"period ({1000.0 / rate:.0f} ms)")
    ax.set_xlabel("commanded tick")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("gato_policy latency over the demo")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
