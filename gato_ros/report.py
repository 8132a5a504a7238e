"""Evaluation pictures and the model card of a trained bundle (matplotlib; offline tooling, not the node).

    python -m gato_ros.report RUN BUNDLE     # after scripts/make_model.sh: writes BUNDLE/README.md, success.png,
                                             # loss.png, and records the evaluation in BUNDLE/gato.json

`RUN/eval/*.json` are `gato-ros eval --json` results on the same seeds (the bundle, the expert and the random policy);
`RUN/timing.json` and `RUN/train_config.json` come from the recipe and the trainer.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from gato_ros.evaluation import failures_text


def _label(r: dict) -> str:
    """A policy's row label: the bundle's name, plus how it ran when that differs from the plain ROS-free eval."""
    label = Path(str(r["policy"])).name
    if r.get("prompt"):
        label += " + prompt"
    if r.get("transport") == "ros2":
        label += " (ROS)"
    return label


def plot_success(results: Sequence[dict], path: str | Path, title: str = "closed-loop success (95% Wilson CI)") -> None:
    """Grouped bars: success rate per task for each policy, with the Wilson interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = sorted({t for r in results for t in r["tasks"]})
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(7.6, 3.6), dpi=120)
    x = np.arange(len(tasks))
    for k, r in enumerate(results):
        rates = [r["tasks"].get(t, {}).get("success_rate", np.nan) for t in tasks]
        lo = [rate - r["tasks"].get(t, {}).get("ci95", [rate, rate])[0] for t, rate in zip(tasks, rates)]
        hi = [r["tasks"].get(t, {}).get("ci95", [rate, rate])[1] - rate for t, rate in zip(tasks, rates)]
        n = max((r["tasks"].get(t, {}).get("episodes", 0) for t in tasks), default=0)
        ax.bar(x + (k - (len(results) - 1) / 2) * width, rates, width, yerr=[lo, hi], capsize=3,
               label=f"{_label(r)} (n={n}/task)")
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(results: Sequence[dict]) -> str:
    rows = ["| policy | task | episodes | success | 95% CI | mean steps | act() p50 / p99 ms | failures |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        tick = r.get("tick_ms", {})
        for task, t in sorted(r["tasks"].items()):
            lo, hi = t["ci95"]
            rows.append(
                f"| {_label(r)} | {task} | {t['episodes']} | {t['success_rate']:.0%} | "
                f"[{lo:.0%}, {hi:.0%}] | {t['mean_steps']:.1f} | "
                f"{(tick.get('p50') or 0):.2f} / {(tick.get('p99') or 0):.2f} | {failures_text(t) or 'n/a'} |")
    return "\n".join(rows)


def write_model_card(run: str | Path, bundle: str | Path, notes: str = "") -> Path:
    """Model card + pictures for `bundle` from the artefacts of `run`; records the evaluation in gato.json."""
    run, bundle = Path(run), Path(bundle)
    meta = json.loads((bundle / "gato.json").read_text())
    train = json.loads((run / "train_config.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted((run / "eval").glob("*.json"))]
    if not results:
        raise ValueError(f"{run}/eval holds no evaluation JSON; run `gato-ros eval ... --out {run}/eval/NAME.json`")
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    plot_success(results, bundle / "success.png")
    if (run / "loss.png").is_file():
        shutil.copy(run / "loss.png", bundle / "loss.png")
    own = [r for r in results if (Path(str(r["policy"])).resolve() == bundle.resolve()
                                  or Path(str(r["policy"])).name == bundle.name) and _label(r) == bundle.name]
    meta["eval"] = own[0] if own else None
    (bundle / "gato.json").write_text(json.dumps(meta, indent=2) + "\n")

    cfg = train["config"]
    tc = train["train_config"]
    # RUN/recipe.md (optional) describes how the run was made when that was not `make model`.
    recipe = (run / "recipe.md").read_text() if (run / "recipe.md").is_file() else f"""\
Reproduce with `make model` (`scripts/make_model.sh`): scripted-expert demonstrations in the sim
(`gato-ros collect`, fixed seeds, action noise on executed targets with clean labels), then
`gato-ros train --config {cfg['name']} --steps {tc['steps']} --batch-size {tc['batch_size']} --lr {tc['lr']}\
{f" --label-sigma {tc['label_sigma']}" if tc.get('label_sigma') else ""}`,
`gato-ros export`, and `gato-ros eval` of the bundle, the expert and a random policy on the same held-out seeds
(the bundle also with a Gato prompt, `--prompt expert`, and through the ROS node graph, `--ros`, where those rows
appear below).
"""
    data = ", ".join(train.get("data", []))
    if len(train.get("data", [])) > 4:  # one directory per collecting process (scripts/train_gpu.sh)
        data = f"{len(train['data'])} directories, {', '.join(train['data'][:2])}, ..."
    where = timing.pop("machine", "the 2-core development machine (its load while this ran: see the notes below)")
    timing_where = f" on {where}"
    film = ""
    if cfg.get("instruction_features"):
        film = (f" The patch embedding is conditioned on the instruction (FiLM over {cfg['instruction_features']} "
                f"hashed word uni- and bigrams; `gato_ros.sequence.instruction_features`).")
    card = f"""# {bundle.name}

A Gato-style decoder-only transformer that drives the sim's UR5e-like arm from the camera image, the joint states
and a text instruction (tasks `reach` and `pick_place`). Preset `{cfg['name']}`: {cfg['n_layers']} layers, width
{cfg['d_model']}, {cfg['n_heads']} heads, FF {cfg['d_ff']}, a window of {cfg['window_steps']} timesteps plus a
pinned instruction prefix; actions are `{cfg['action_mode']}` joint targets in 1024 uniform bins.{film}
Graphs:
`prefill.onnx`, `decode.onnx` (fixed-size KV cache); `model.pt` for fine-tuning (`gato-ros train --init`).

## Data and recipe

{recipe}
- data: {data}; episodes: {train.get('episodes')}
- git commit of the training code: `{train.get('git_commit')}`
- wall-clock{timing_where}: {json.dumps(timing)}

![training loss](loss.png)

## Evaluation (closed loop in the sim, held-out seeds)

{_table(results)}

![success per task](success.png)

{notes}
"""
    path = bundle / "README.md"
    path.write_text(card)
    return path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__)
        return 2
    notes = Path(args[2]).read_text() if len(args) > 2 else ""
    print(write_model_card(args[0], args[1], notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
