"""Training loop: AdamW, warm-up + cosine, gradient clipping, bf16 autocast (GPU, CPUs with bf16), validation,
resumable checkpoints, CSV (+TensorBoard) logs and a loss-curve PNG; runs alone or under `torchrun` with DDP.

Recipe after Gato Sec. 4 / App. A (AdamW, beta2 0.95, weight decay 0.1, linear warm-up then cosine decay to a
tenth, clip 1.0), with a higher learning rate suited to the small presets.

A checkpoint (`RUN/checkpoint.pt`) holds the model and optimiser state, the step, the model config (with its
tokenizer config and timestep layout), the action normaliser, the robot facts from the data (joint names and
limits, control rate), the training recipe, the data paths and the git commit; `export` turns it into a bundle.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from gato_ros.model.config import GatoConfig, preset
from gato_ros.model.data import EpisodeSequences, check_episodes, fit_normalizer, split_episodes
from gato_ros.model.model import GatoModel
from gato_ros.sequence import ActionNormalizer

CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"  # RUN/snapshots/step_NNNNNN.pt: weights kept every `keep_every` steps


@dataclass
class TrainConfig:
    """Training recipe (written into the checkpoint)."""

    out: str = "runs/gato"  # run directory: checkpoint.pt, log.csv, loss.png, train_config.json
    data: list[str] = field(default_factory=list)  # episode dataset directories
    config: str = "gato-small"  # model preset name (ignored with init)
    init: str | None = None  # checkpoint (.pt / run dir) or bundle dir to start from (fine-tuning)
    steps: int = 2000  # optimiser steps (total, including resumed ones)
    batch_size: int = 16  # contexts per step per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (Gato: a tenth)
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    prompt_prob: float = 0.25  # Gato: 25% of sequences carry a prompt
    start_prob: float = 0.0  # share of training contexts that start at an episode's first step (the decision step)
    turn_prob: float = 0.0  # share of training contexts that hold the episode's sharpest turn (data.sharpest_turn)
    task_share: dict[str, float] = field(default_factory=dict)  # {task: share of contexts} (data.task_weights)
    freeze: str = ""  # regex: parameters whose names match it keep their values (fine-tuning part of a model)
    image_shift: int = 0  # > 0: each training window's images moved by up to this many pixels (data.shift_images)
    label_sigma: float = 0.0  # > 0: Gaussian target over neighbouring action bins (std in bins); 0: Gato one-hot
    decision_weight: float = 1.0  # weight of each episode's first-timestep targets in the loss (GatoModel.loss)
    goal_weight: float = 0.0  # > 0: plus this times the auxiliary goal-position loss (GatoModel.loss, episode_goal)
    precision: str = "auto"  # bf16 autocast or fp32; auto: bf16 where the hardware has it (see amp_dtype)
    val_fraction: float = 0.1
    val_every: int = 200
    val_batches: int = 4
    ckpt_every: int = 500
    keep_every: int = 0  # > 0: also keep the weights every this many steps as RUN/snapshots/step_NNNNNN.pt
    seed: int = 0
    action_margin: float = 0.1  # action ranges widened by this share of the data's span per side
    threads: int = 0  # torch intra-op threads per process (0: see `default_threads`)
    workers: int = 0  # processes building batches ahead of the training step (0: built in the training process)
    minutes: float = 0.0  # > 0: wall-clock budget; the schedule runs on max(step, time) progress, `steps` caps it
    resume: bool = False  # continue RUN/checkpoint.pt if present
    progress: bool = True

    def __post_init__(self) -> None:
        for f in ("steps", "batch_size", "val_every", "val_batches", "ckpt_every"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"TrainConfig.{f}={getattr(self, f)}: must be >= 1")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"TrainConfig: need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.workers < 0 or self.minutes < 0 or self.keep_every < 0:
            raise ValueError(f"TrainConfig: workers={self.workers}, minutes={self.minutes} and "
                             f"keep_every={self.keep_every} must be >= 0")
        for f in ("prompt_prob", "start_prob", "turn_prob"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"TrainConfig.{f}={getattr(self, f)}: must lie in [0, 1]")
        if not self.decision_weight > 0:
            raise ValueError(f"TrainConfig.decision_weight={self.decision_weight}: must be > 0")
        if not self.goal_weight >= 0:
            raise ValueError(f"TrainConfig.goal_weight={self.goal_weight}: must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: choose one of {PRECISIONS}")


PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX; Linux /proc/cpuinfo). Without it torch
    emulates bf16 matmuls, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast or None (fp32) for `precision` on `device`. auto: bf16 on a GPU, and on a CPU that has
    native bf16 (2-core AMD EPYC development machine, gato-arm-film-coord, batch 64: 0.55 s per step with 2
    threads against 0.82 s in fp32, 0.85 against 1.45 s with 1 thread). Parameters, optimiser state, softmax and
    loss stay fp32 either way."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_has_bf16():
        return torch.bfloat16
    return None


def freeze_parameters(model: torch.nn.Module, pattern: str) -> list[str]:
    """Stop training the parameters whose names match the regex `pattern` (re.search); -> their names. An empty
    pattern freezes nothing; one that matches nothing, or everything, is an error naming the parameters."""
    if not pattern:
        return []
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"freeze pattern {pattern!r}: not a regular expression ({e})") from None
    names = [n for n, _ in model.named_parameters()]
    hit = [n for n in names if rx.search(n)]
    if not hit or len(hit) == len(names):
        groups = sorted({".".join(n.split(".")[:2]) for n in names})
        raise ValueError(f"freeze pattern {pattern!r} matches {'no' if not hit else 'every'} parameter; names look "
                         f"like {groups}")
    for n in hit:
        model.get_parameter(n).requires_grad_(False)
    return hit


def git_commit() -> str:
    """The commit (with `-dirty` when the tree has changes) of the checkout this code runs from."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty and sha else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_threads(world: int = 1) -> int:
    """Cores per process, but 1 on machines with <= 2 cores per process: there other work (the sim, the ROS
    nodes, other jobs) competes for the cores, and torch's intra-op threads then wait on each other -- a gato-arm
    step took 5.5 s with 2 threads vs 1.1 s with 1 on this shared 2-core box."""
    per = max(1, (os.cpu_count() or 1) // world)
    return 1 if per <= 2 else per


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, tc: TrainConfig, time_frac: float = 0.0) -> float:
    """Linear warm-up to `lr`, then cosine to `lr * min_lr_ratio` at `steps` -- or, with a `minutes` budget, at
    whichever comes first of `steps` and the budget (`time_frac`: share of the budget spent after warm-up)."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = min(1.0, max((step - tc.warmup) / max(1, tc.steps - tc.warmup), time_frac))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless training batches, built in DataLoader worker processes (GPU training: one process builds ~2500
    contexts/s, which a GPU consumes faster). Each worker draws from its own generator keyed by (seed, rank,
    step at start, worker), so a run is reproducible for a given worker count."""

    def __init__(self, data: EpisodeSequences, batch_size: int, key: list[int]):
        self.data, self.batch_size, self.key = data, batch_size, key

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.key + [info.id if info is not None else 0])
        while True:
            yield self.data.batch(rng, self.batch_size)


def _batches(data: EpisodeSequences, tc: TrainConfig, rng: np.random.Generator, key: list[int], device: torch.device):
    """Iterator of training batches as torch tensors on `device`."""
    if tc.workers == 0:
        while True:
            yield _to_torch(data.batch(rng, tc.batch_size), device)
    loader = torch.utils.data.DataLoader(
        _BatchStream(data, tc.batch_size, key), batch_size=None, num_workers=tc.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4, worker_init_fn=lambda _: torch.set_num_threads(1))
    for b in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in b.items()}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint from a `.pt` file, a run directory, or a bundle directory (its `model.pt`)."""
    p = Path(path)
    if p.is_dir():
        for name in (CHECKPOINT, "model.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path}: no {CHECKPOINT} (run directory) or model.pt (bundle) inside")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    for key in ("model", "config", "normalizer"):
        if key not in ckpt:
            raise ValueError(f"{p}: not a gato_ros checkpoint (missing {key!r})")
    return ckpt


def load_episodes(paths: Sequence[str]) -> list[Any]:
    from gato_ros.dataset import EpisodeDataset

    if not paths:
        raise ValueError("no training data: pass --data DIR (repeatable)")
    episodes: list[Any] = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"--data {p}: no such directory")
        episodes.extend(EpisodeDataset(p))
    return episodes


def robot_facts(episodes: Sequence[Any], spec) -> dict[str, Any]:
    """Joint names, limits and control rate from the episodes' metadata (defaults when absent)."""
    meta = dict(getattr(episodes[0], "meta", None) or {})
    n = spec.action_size
    names = list(meta.get("joint_names") or [f"joint_{i}" for i in range(n)])
    limits = meta.get("joint_limits")
    if limits is None:
        limits = [[-math.pi, math.pi]] * n
    limits = np.asarray(limits, dtype=np.float64).reshape(n, 2).tolist()
    return {
        "joint_names": names,
        "joint_limits": limits,
        "control_rate_hz": float(meta.get("control_rate_hz", 20.0)),
        "image_size": list(spec.image_shape[:2]) if spec.image_shape is not None else None,
    }


class _Logger:
    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "log.csv"
        self.rows: list[dict[str, float]] = []
        self.tb = None
        if enabled:
            if self.path.exists():
                with open(self.path) as f:
                    self.rows = [{k: float(v) if v else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional

                self.tb = SummaryWriter(str(out / "tb"))
            except Exception:  # tensorboard not installed: CSV + PNG only
                self.tb = None

    FIELDS = ("step", "lr", "train_loss", "val_loss", "tokens_per_s", "elapsed_s", "val_bin_err", "goal_loss")

    def log(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        new = not self.path.exists()
        fields = self.FIELDS
        if not new:  # a resumed run keeps its file's columns
            with open(self.path) as f:
                fields = tuple(next(csv.reader(f), self.FIELDS))
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if (isinstance(row.get(k), float) and math.isnan(row[k])) else row.get(k, ""))
                        for k in self.FIELDS})
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and not (isinstance(v, float) and math.isnan(v)):
                    self.tb.add_scalar(k, v, int(row["step"]))

    def plot(self, out: Path) -> None:
        if not self.enabled or not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, [r["train_loss"] for r in self.rows], label="train", lw=1)
        val = [(r["step"], r["val_loss"]) for r in self.rows if not math.isnan(r.get("val_loss", float("nan")))]
        if val:
            ax.plot(*zip(*val), "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("action cross-entropy (nats)")
        ax.set_title("gato_ros training")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)


def _to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def train(tc: TrainConfig, episodes: Sequence[Any] | None = None, model_overrides: dict | None = None) -> dict:
    """Train; returns {"step", "train_loss", "val_loss", "checkpoint"}. `episodes` (Episode-like objects)
    replaces loading `tc.data`; `model_overrides` adjust the preset (tests)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else \
        torch.device("cpu")
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(tc.threads or default_threads(world))
    is_main = rank == 0
    seed_everything(tc.seed + rank)
    out = Path(tc.out)

    if episodes is None:
        episodes = load_episodes(tc.data)
    spec = check_episodes(episodes)  # empty / mixed layouts stop here, naming the episode

    resume_path = out / CHECKPOINT
    resumed = tc.resume and resume_path.is_file()
    init = load_checkpoint(resume_path) if resumed else (load_checkpoint(tc.init) if tc.init else None)
    if init is not None:
        cfg = GatoConfig.from_dict(init["config"])
        if cfg.spec != spec:
            raise ValueError(f"{tc.init or resume_path}: model layout {cfg.spec.to_dict()} does not match the data "
                             f"{spec.to_dict()}")
        norm = ActionNormalizer.from_dict(init["normalizer"])
    else:
        cfg = preset(tc.config, spec=spec, **(model_overrides or {}))
        norm = None

    train_idx, val_idx = split_episodes(len(episodes), tc.val_fraction, tc.seed, [ep.task for ep in episodes])
    train_eps = [episodes[i] for i in train_idx]
    val_eps = [episodes[i] for i in val_idx] or train_eps
    if norm is None:
        norm = fit_normalizer(train_eps, cfg.action_mode, tc.action_margin)
    goals = tc.goal_weight > 0
    data = EpisodeSequences(train_eps, cfg, norm, tc.prompt_prob, tc.start_prob, tc.turn_prob, tc.task_share,
                            tc.image_shift, goals=goals)
    if goals and not any(known.any() for _, known in data.goals):
        raise ValueError(f"goal_weight={tc.goal_weight}: none of the {len(train_eps)} training episodes has a sim "
                         "layout in its meta (`gato-ros collect` writes one; episodes from rosbags have none)")
    val_data = EpisodeSequences(val_eps, cfg, norm, tc.prompt_prob)  # uniform starts: comparable across recipes
    val_batches = [_to_torch(b, device) for b in val_data.fixed_batches(tc.seed + 12345, tc.val_batches,
                                                                         tc.batch_size)]

    model = GatoModel(cfg)
    if init is not None:
        model.load_state_dict(init["model"])
    if goals:  # after the weights: a fine-tune from a model trained without the head gets a fresh one
        model.add_goal_head()
        if init is not None and "goal_head" in init:
            model.goal_head.load_state_dict(init["goal_head"])
    model = model.to(device)
    frozen = freeze_parameters(model, tc.freeze)
    if frozen and is_main:
        print(f"frozen: {len(frozen)} tensors, {sum(model.get_parameter(n).numel() for n in frozen):,} of "
              f"{sum(p.numel() for p in model.parameters()):,} parameters (--freeze {tc.freeze!r})", flush=True)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas)
    step = 0
    if resumed:
        if ("goal_head" in init) != goals:
            raise ValueError(f"{resume_path} was trained {'with' if 'goal_head' in init else 'without'} the goal "
                             f"head; resume it with {'a' if 'goal_head' in init else 'no'} --goal-weight")
        opt.load_state_dict(init["optimizer"])
        step = int(init["step"])
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    rng = np.random.default_rng([tc.seed, rank, step])  # resumed runs draw fresh (but reproducible) batches
    batches = _batches(data, tc, rng, [tc.seed, rank, step], device)

    facts = robot_facts(episodes, spec)
    amp = amp_dtype(tc.precision, device)
    meta = {
        "config": cfg.to_dict(),
        "normalizer": norm.to_dict(),
        "robot": facts,
        "train_config": dataclasses.asdict(tc),
        "git_commit": git_commit(),
        "data": [str(Path(p).resolve()) for p in tc.data],
        "episodes": {"train": len(train_eps), "val": len(val_idx)},
        "world_size": world,
        "autocast": "bf16" if amp is not None else "fp32",
    }
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(meta, indent=2, default=str))
    logger = _Logger(out, is_main)
    autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def evaluate() -> tuple[float, float]:
        """Validation one-hot cross-entropy (comparable across label_sigma) and mean greedy bin error."""
        model.eval()
        tot, err, n = 0.0, 0.0, 0
        with torch.no_grad(), autocast:
            for b in val_batches:
                loss, k, e = model.loss(b, bin_error=True)
                tot += float(loss) * int(k)
                err += float(e)
                n += int(k)
        model.train()
        return tot / max(n, 1), err / max(n, 1)

    def write(path: Path, **extra: Any) -> None:
        """meta + the weights + `extra` to `path`, atomically (a killed run never leaves half a file there)."""
        tmp = path.with_suffix(".tmp")
        state = model.state_dict()  # the goal head's weights apart: export and --init read "model" as GatoModel's
        head = {k.removeprefix("goal_head."): state.pop(k) for k in list(state) if k.startswith("goal_head.")}
        torch.save(dict(meta, model=state, step=step, val_loss=val_loss, **({"goal_head": head} if head else {}),
                        **extra), tmp)
        os.replace(tmp, path)

    def save(path: Path) -> None:
        write(path, optimizer=opt.state_dict())

    def keep() -> None:
        """A snapshot of the weights alone (no optimiser state: half the size), for choosing among them later."""
        (out / SNAPSHOTS).mkdir(exist_ok=True)
        write(out / SNAPSHOTS / f"step_{step:06d}.pt")

    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=step, disable=not (is_main and tc.progress), desc="train",
               dynamic_ncols=True)
    model.train()
    t_start = time.perf_counter()
    val_loss, train_loss = float("nan"), float("nan")
    ema = None
    saved = step
    t_warm = None  # when warm-up ended: a time budget's cosine runs over what is left of it after that
    budget_s = tc.minutes * 60.0
    while step < tc.steps:
        t0 = time.perf_counter()
        time_frac = 0.0
        if budget_s > 0:
            if step >= tc.warmup and t_warm is None:
                t_warm = t0
            over = float(t0 - t_start >= budget_s)
            if t_warm is not None:
                time_frac = (t0 - t_warm) / max(1e-9, budget_s - (t_warm - t_start))
            if distributed:  # every rank stops at the same step
                f = torch.tensor([time_frac, over], device=device)
                dist.all_reduce(f, op=dist.ReduceOp.MAX)
                time_frac, over = f.tolist()
            if over or time_frac >= 1.0:
                break
        lr = lr_at(step, tc, time_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(batches)
        with autocast:
            loss, _ = ddp_model(batch, _loss=True, label_sigma=tc.label_sigma,  # DDP syncs gradients of forward
                                decision_weight=tc.decision_weight, goal_weight=tc.goal_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        train_loss = loss.item()
        goal_loss = float("nan")
        if goals:  # the logged training loss is the action part alone, comparable with runs without the head
            train_loss, goal_loss = (float(model.last_losses[k]) for k in ("action", "goal"))
        ema = train_loss if ema is None else 0.9 * ema + 0.1 * train_loss
        tok_s = float(batch["valid"].sum()) * world / (time.perf_counter() - t0)
        row = {"step": step, "lr": lr, "train_loss": train_loss, "val_loss": float("nan"), "tokens_per_s": tok_s,
               "elapsed_s": time.perf_counter() - t_start, "val_bin_err": float("nan"), "goal_loss": goal_loss}
        if step % tc.val_every == 0 or step == tc.steps:
            val_loss, val_err = evaluate()
            row["val_loss"], row["val_bin_err"] = val_loss, val_err
        logger.log(row)
        bar.set_postfix(loss=f"{ema:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tok_s:,.0f}")
        if is_main and not tc.progress and not math.isnan(row["val_loss"]):
            print(f"step {step}: train {train_loss:.4f} val {val_loss:.4f} bin error {row['val_bin_err']:.1f}"
                  + (f" goal {goal_loss:.3f}" if goals else ""), flush=True)
        bar.update(1)
        if is_main and tc.keep_every and (step % tc.keep_every == 0 or step == tc.steps):
            keep()
        if step % tc.ckpt_every == 0 or step == tc.steps:
            if is_main:
                save(out / CHECKPOINT)
                logger.plot(out)
            saved = step
    bar.close()
    if budget_s > 0 and step != saved and step > 0:  # stopped by the time budget between checkpoints
        val_loss, val_err = evaluate()
        logger.log({"step": step, "lr": lr_at(step, tc, 1.0), "train_loss": train_loss, "val_loss": val_loss,
                    "tokens_per_s": float("nan"), "elapsed_s": time.perf_counter() - t_start, "val_bin_err": val_err})
        if is_main:
            save(out / CHECKPOINT)
            if tc.keep_every:
                keep()
            logger.plot(out)
    if distributed:
        dist.barrier()
    return {"step": step, "train_loss": train_loss, "val_loss": val_loss, "checkpoint": str(out / CHECKPOINT)}

