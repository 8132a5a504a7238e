"""`gato-ros train`: train (or fine-tune) the transformer on episode datasets.

    gato-ros train --data data/reach --data data/pick --out runs/small --config gato-small --steps 2000
    torchrun --nproc_per_node=2 $(which gato-ros) train --data data/reach --out runs/ddp   # DDP (gloo on CPU)

Writes RUN/checkpoint.pt (resumable with --resume), RUN/log.csv, RUN/loss.png, RUN/train_config.json.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gato_ros.model.config import PRESETS
    from gato_ros.model.train import PRECISIONS

    d = _defaults()
    parser.add_argument("--data", action="append", required=True, metavar="DIR",
                        help="episode dataset directory (repeat for several)")
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory for checkpoints and logs")
    parser.add_argument("--config", default=d.config, choices=sorted(PRESETS), help="model preset (default %(default)s)")
    parser.add_argument("--init", metavar="BUNDLE_OR_CKPT", help="start from this checkpoint / run dir / bundle")
    parser.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="contexts per step per process")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps (default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip)
    parser.add_argument("--prompt-prob", type=float, default=d.prompt_prob,
                        help="share of contexts with a Gato prompt prefix (default %(default)s)")
    parser.add_argument("--start-prob", type=float, default=d.start_prob,
                        help="share of contexts whose window starts at the episode's first step, where the action "
                        "must come from the image and the instruction (default %(default)s)")
    parser.add_argument("--turn-prob", type=float, default=d.turn_prob,
                        help="share of contexts whose window holds the episode's sharpest turn of the commanded "
                        "motion (pick_place: lifting -> toward the bowl, where the bowl's colour decides; default "
                        "%(default)s)")
    parser.add_argument("--task-share", action="append", default=[], metavar="TASK=P",
                        help="draw this share of the contexts from TASK's episodes (repeatable; the other tasks share "
                        "the rest by their number of windows): a few new demonstrations next to a large replay set")
    parser.add_argument("--freeze", default="", metavar="REGEX",
                        help="keep the parameters whose names match REGEX fixed (fine-tune the rest), e.g. "
                        "'embed\\.patch\\.(?!film)|blocks\\.[01]\\.'; names: embed.token, embed.patch, blocks.N, "
                        "head, ...")
    parser.add_argument("--image-shift", type=int, default=0, metavar="PX",
                        help="augmentation: move each training window's images by a random offset of up to PX "
                        "pixels, edges repeated (0: none, default; validation is never shifted)")
    parser.add_argument("--label-sigma", type=float, default=d.label_sigma,
                        help="train against a Gaussian over neighbouring action bins with this std in bins "
                        "(HL-Gauss; 0: Gato's one-hot cross-entropy, default %(default)s)")
    parser.add_argument("--decision-weight", type=float, default=d.decision_weight, metavar="W",
                        help="count the targets of each episode's first timestep (where only the image and the "
                        "instruction say where to go) W times in the loss (default %(default)s)")
    parser.add_argument("--goal-weight", type=float, default=d.goal_weight, metavar="W",
                        help="add W times an auxiliary loss: predict each episode's target object and receptacle "
                        "positions (the sim layout `collect` records) from every timestep's first action "
                        "position; teaches the model to find the named object (default %(default)s: off)")
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                        help="bf16 autocast or fp32 matmuls; auto: bf16 on a GPU and on CPUs with native bf16 "
                        "(AVX-512 BF16, AMX), fp32 elsewhere (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    parser.add_argument("--keep-every", type=int, default=0, metavar="N",
                        help="also keep the weights every N steps (and at the end) as RUN/snapshots/step_NNNNNN.pt, "
                        "each loadable by export / --init (default 0: only RUN/checkpoint.pt)")
    parser.add_argument("--seed", type=int, default=d.seed, help="one seed for python, numpy and torch")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: cores / processes, but 1 when that is <= 2: on a shared "
                        "2-core machine two threads are several times slower than one)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that build batches ahead of the training step (GPU training; default 0: the "
                        "training process builds them)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="wall-clock budget: stop after this many minutes (or --steps, whichever comes first); "
                        "the learning-rate schedule follows the budget (default 0: no budget)")
    parser.add_argument("--resume", action="store_true", help="continue RUN/checkpoint.pt if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the final losses as JSON")


def parse_shares(items: list[str]) -> dict[str, float]:
    """["point_above=0.5", ...] -> {"point_above": 0.5}; bad items stop with the item named."""
    out: dict[str, float] = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            if not (sep and task):
                raise ValueError
            out[task] = float(value)
        except ValueError:
            raise SystemExit(f"--task-share {item!r}: expected TASK=P, e.g. point_above=0.5") from None
    return out


def _defaults():
    from gato_ros.model.train import TrainConfig

    return TrainConfig()


def run(args: argparse.Namespace) -> int:
    from gato_ros.model.train import TrainConfig, train

    tc = TrainConfig(
        out=args.out, data=list(args.data), config=args.config, init=args.init, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup=min(args.warmup, max(1, args.steps // 5)),
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, prompt_prob=args.prompt_prob,
        start_prob=args.start_prob, turn_prob=args.turn_prob, task_share=parse_shares(args.task_share),
        freeze=args.freeze, image_shift=args.image_shift,
        label_sigma=args.label_sigma, decision_weight=args.decision_weight, goal_weight=args.goal_weight,
        precision=args.precision,
        val_fraction=args.val_fraction, val_every=args.val_every, ckpt_every=args.ckpt_every,
        keep_every=args.keep_every, seed=args.seed,
        threads=args.threads, workers=args.workers, minutes=args.minutes, resume=args.resume,
        progress=not args.no_progress,
    )
    result = train(tc)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result) if args.json else
              f"step {result['step']}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}; "
              f"checkpoint {result['checkpoint']}")
    return 0
