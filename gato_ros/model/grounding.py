"""Does a trained model read the image and the instruction? A one-minute check instead of a closed-loop evaluation.

    python -m gato_ros.model.grounding CHECKPOINT_OR_BUNDLE DATA_DIR [--task reach] [--start 0] [--episodes 100]

Teacher-forced on recorded episodes (no sim): the context holds the instruction and steps [start, start + window) of
an episode, and the model predicts every action of the window. The same contexts are scored three times:

| variant | what changes | a model that grounds the instruction in the image ... |
|---|---|---|
| `true` | nothing | ... has a low error here |
| `other_colour` | the colour word of the instruction replaced by another colour ("red" -> "green") | ... gets worse: it goes for another object |
| `other_image` | the images replaced by the same steps of another episode (another layout) | ... gets worse: the target moved |

Reported per variant: the mean |greedy bin - label bin| per joint and overall, and the mean log-probability of the
label bin. At `--start 0` the arm is at rest and nothing is in the context yet, so the first action can only come
from the image and the instruction: there, `true` must beat both others by a clear margin.

Score episodes the model was not trained on, e.g. `gato-ros collect --task reach --episodes 100 --seed 1000000
--out data/heldout_reach` (the evaluation seeds). Measured (model card), the shoulder-pan error of the first reach
action in bins, true / other colour word / other layout's image: every CPU-trained bundle scored the same on all
three (the previous shipped bundle 32.1 / 32.1 / 34.6, the FiLM attempt 51.3 / 51.3 / 51.2: they chose the first
motion without looking at where the named object is) until the goal loss (`train --goal-weight`); the shipped
bundle (`make model`'s CPU recipe, with it) scores 0.59 / 50.98 / 44.27, the GPU-trained one before it 0.6 / 49.0 /
42.7.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np


def swap_colour(instruction: str, k: int = 1) -> str | None:
    """`instruction` with its first colour word replaced by the k-th next colour of the sim's palette
    (`gato_ros.sim.tasks.COLOURS`: red, green, blue, yellow); None when it names no colour."""
    from gato_ros.sim.tasks import COLOURS

    colour_words = tuple(COLOURS)
    words = instruction.split()
    for i, w in enumerate(words):
        if w in colour_words:
            words[i] = colour_words[(colour_words.index(w) + k) % len(colour_words)]
            return " ".join(words)
    return None


def grounding_report(model, normalizer, episodes: Sequence[Any], start: int = 0) -> dict[str, Any]:
    """Scores of the three variants (see the module docstring) over `episodes` (those longer than the window)."""
    import torch

    from gato_ros.model.data import EpisodeSequences

    cfg = model.cfg
    N = cfg.window_steps
    eps = [e for e in episodes if len(e.actions) >= start + N]
    if len(eps) < 2:
        raise ValueError(f"need at least 2 episodes with >= {start + N} steps, got {len(eps)}")
    data = EpisodeSequences(eps, cfg, normalizer, prompt_prob=0.0)
    A = cfg.spec.action_size

    def score(i: int, text: str, image_from: int) -> tuple[np.ndarray, np.ndarray]:
        steps = data.tokens(i, start, N)
        if image_from != i:
            steps.patches[:] = data.tokens(image_from, start, N).patches
        b = data.builder.build(data.builder.text_ids(text), steps, start, None, n_steps=N,
                               text_feat=data.builder.text_features(text))
        batch = {k: torch.from_numpy(v)[None] for k, v in b.items()}
        with torch.no_grad():
            sel = batch["target"] >= 0
            logp = torch.log_softmax(model.head(model.hidden(batch)[sel]).float(), -1)  # (N * A, bins)
            tgt = batch["target"][sel]
            err = (logp.argmax(-1) - tgt).abs().float().numpy().reshape(-1, A)
            lp = logp.gather(-1, tgt[:, None])[:, 0].numpy().reshape(-1, A)
        return err, lp

    runs: dict[str, list] = {"true": [], "other_colour": [], "other_image": []}
    n_colour = 0
    for i, ep in enumerate(eps):
        runs["true"].append(score(i, ep.instruction, i))
        other = swap_colour(ep.instruction, 1 + i % 3)
        if other is not None:
            runs["other_colour"].append(score(i, other, i))
            n_colour += 1
        runs["other_image"].append(score(i, ep.instruction, (i + 1 + len(eps) // 2) % len(eps)))
    out: dict[str, Any] = {"episodes": len(eps), "start": start, "window_steps": N,
                           "episodes_with_colour_word": n_colour}
    for name, rows in runs.items():
        if not rows:
            out[name] = None
            continue
        err = np.concatenate([r[0] for r in rows])  # (episodes * N, A)
        first = np.stack([r[0][0] for r in rows])  # (episodes, A): the window's first step
        out[name] = {
            "bin_error": round(float(err.mean()), 2),
            "bin_error_per_joint": [round(float(x), 2) for x in err.mean(0)],
            "first_step_bin_error_per_joint": [round(float(x), 2) for x in first.mean(0)],
            "label_logprob": round(float(np.concatenate([r[1] for r in rows]).mean()), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gato_ros.model.grounding",
                                description="teacher-forced check that a model reads the image and the instruction")
    p.add_argument("checkpoint", help="run directory, checkpoint .pt, or bundle directory (its model.pt)")
    p.add_argument("data", help="episode dataset directory (gato-ros collect / dataset from-bags)")
    p.add_argument("--task", default="reach", help="only episodes of this task (default %(default)s)")
    p.add_argument("--start", type=int, default=0, help="first step of the scored window (default 0: the decision)")
    p.add_argument("--episodes", type=int, default=100, help="the last N episodes of the task (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)

    import torch

    from gato_ros.dataset import EpisodeDataset
    from gato_ros.model.config import GatoConfig
    from gato_ros.model.model import GatoModel
    from gato_ros.model.train import load_checkpoint
    from gato_ros.sequence import ActionNormalizer

    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    model = GatoModel(GatoConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    episodes = [e for e in EpisodeDataset(args.data) if e.task == args.task][-args.episodes:]
    if not episodes:
        print(f"{args.data}: no episodes of task {args.task!r}", file=sys.stderr)
        return 2
    report = grounding_report(model, ActionNormalizer.from_dict(ckpt["normalizer"]), episodes, args.start)
    report.update(checkpoint=args.checkpoint, task=args.task)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.checkpoint}: {report['episodes']} {args.task} episodes, window from step {args.start}")
    for name in ("true", "other_colour", "other_image"):
        r = report[name]
        if r is not None:
            print(f"  {name:13s} bin error {r['bin_error']:7.2f}  first step per joint "
                  f"{' '.join(f'{x:6.1f}' for x in r['first_step_bin_error_per_joint'])}  "
                  f"label log-prob {r['label_logprob']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
