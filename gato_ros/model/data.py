"""Episodes -> batches of training contexts (numpy; the model side converts to torch).

A training sample is one context (`gato_ros.sequence`): the instruction, with probability `prompt_prob` a Gato
prompt (`prompt_steps` timesteps of another episode of the same task: half the time the end of a successful
episode, i.e. goal conditioning, half a uniformly drawn stretch; Gato Sec. 3), then `window_steps` consecutive
timesteps from a uniformly drawn start. Each timestep carries 7 action targets.

Works over any sequence of Episode-like objects (`observations` dict, `actions`, `instruction`, `task`,
`success`, `meta`), e.g. `gato_ros.dataset.EpisodeDataset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from gato_ros.model.config import GatoConfig
from gato_ros.sequence import UNPOSITIONED_KEYS, ActionNormalizer, ContextBuilder
from gato_ros.tokenizer import GatoTokenizer, TimestepSpec

OBS_KEYS = ("joint_pos", "joint_vel")

# Goal positions for the auxiliary goal loss (`GatoModel.loss`'s goal_weight): the target object's xy in the arm's
# base frame, then the receptacle's (pick_place), each coordinate in GOAL_BINS bins over GOAL_LOW..GOAL_HIGH metres
# (the sim's table lies inside; 1.4 cm bins in x, 1.9 cm in y). Per context, not per position (`compact`).
GOAL_BINS = 64
GOAL_LOW = np.array([0.0, -0.6, 0.0, -0.6])
GOAL_HIGH = np.array([0.9, 0.6, 0.9, 0.6])
GOAL_KEYS = ("goal_bin", "goal_mask")


def episode_goal(ep: Any) -> tuple[np.ndarray, np.ndarray]:
    """(bins (4,) int64, known (4,) float32): the episode's target object and receptacle positions from the sim
    layout `gato-ros collect` writes into its meta (`meta["layout"]`: "target", "receptacle" and the "objects" with
    their "body" and "xy"). Unknown entries (no receptacle in reach; no layout at all, e.g. episodes from rosbags)
    have bin 0 and known 0."""
    xy, known = np.zeros(4), np.zeros(4, np.float32)
    layout = (getattr(ep, "meta", None) or {}).get("layout") or {}
    objects = {o.get("body"): o.get("xy") for o in layout.get("objects", [])}
    for k, role in enumerate(("target", "receptacle")):
        pos = objects.get(layout.get(role))
        if pos is not None:
            xy[2 * k:2 * k + 2] = pos
            known[2 * k:2 * k + 2] = 1.0
    bins = np.clip(np.round((xy - GOAL_LOW) / (GOAL_HIGH - GOAL_LOW) * (GOAL_BINS - 1)), 0, GOAL_BINS - 1)
    return bins.astype(np.int64) * (known > 0), known


def _name(ep: Any, i: int) -> str:
    meta = getattr(ep, "meta", {}) or {}
    src = meta.get("path") or meta.get("source") or getattr(ep, "path", None)
    return f"episode {i}" + (f" ({src})" if src else "") + f" task={getattr(ep, 'task', '?')!r}"


def check_episodes(episodes: Sequence[Any]) -> TimestepSpec:
    """The common timestep spec of `episodes`; ValueError naming the first episode that disagrees or is empty."""
    if len(episodes) == 0:
        raise ValueError("training data is empty: no episodes found; pass --data DIR with episodes from "
                         "`gato-ros collect` or `gato-ros dataset from-bags`")
    spec = None
    first = ""
    for i, ep in enumerate(episodes):
        obs = ep.observations
        missing = [k for k in ("image",) + OBS_KEYS if k not in obs]
        if missing:
            raise ValueError(f"{_name(ep, i)}: observations lack {missing}; expected keys image, joint_pos, joint_vel")
        T = len(ep.actions)
        if T == 0:
            raise ValueError(f"{_name(ep, i)}: has no steps")
        for k in ("image",) + OBS_KEYS:
            if len(obs[k]) != T:
                raise ValueError(f"{_name(ep, i)}: observations[{k!r}] has {len(obs[k])} steps, actions have {T}")
        s = TimestepSpec(
            image_shape=tuple(int(v) for v in np.shape(obs["image"])[1:]),
            continuous={k: int(np.shape(obs[k])[1]) for k in OBS_KEYS},
            action_size=int(np.shape(ep.actions)[1]),
        )
        if spec is None:
            spec, first = s, _name(ep, i)
        elif s != spec:
            raise ValueError(
                f"{_name(ep, i)}: layout {s.to_dict()} differs from {first}: {spec.to_dict()}; "
                f"train on episodes with one joint count and one image size"
            )
    return spec


@dataclass
class Sample:
    episode: int
    start: int
    prompt_episode: int | None
    prompt_start: int


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W, C) images moved by (dy, dx) pixels, the uncovered border filled with the edge pixels (random-shift
    augmentation as in DrQ, Kostrikov et al. 2020: a few demonstrations then teach positions relative to what is
    seen, not exact pixel coordinates)."""
    if dy == 0 and dx == 0:
        return images
    h, w = images.shape[1:3]
    if abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"shift ({dy}, {dx}) does not fit {h}x{w} images")
    p = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[:, p - dy:p - dy + h, p - dx:p - dx + w])


class EpisodeSequences:
    """Samples fixed-size training contexts from episodes. Deterministic given the generator passed in."""

    def __init__(self, episodes: Sequence[Any], cfg: GatoConfig, normalizer: ActionNormalizer,
                 prompt_prob: float = 0.25, start_prob: float = 0.0, turn_prob: float = 0.0,
                 task_share: Mapping[str, float] | None = None, image_shift: int = 0, goals: bool = False):
        spec = check_episodes(episodes)
        if spec != cfg.spec:
            raise ValueError(f"episodes have layout {spec.to_dict()}, the model config expects {cfg.spec.to_dict()}")
        self.episodes = episodes
        self.cfg = cfg
        self.norm = normalizer
        self.tok = GatoTokenizer(cfg.tokenizer)
        self.builder = ContextBuilder(cfg, self.tok)
        self.prompt_prob = prompt_prob if cfg.prompt_steps > 0 else 0.0
        if not 0.0 <= start_prob <= 1.0:
            raise ValueError(f"start_prob={start_prob}: must lie in [0, 1]")
        self.start_prob = start_prob
        if not 0.0 <= turn_prob <= 1.0 or start_prob + turn_prob > 1.0:
            raise ValueError(f"turn_prob={turn_prob}: must lie in [0, 1], and start_prob + turn_prob <= 1")
        self.turn_prob = turn_prob
        if image_shift < 0:
            raise ValueError(f"image_shift={image_shift}: must be >= 0 (pixels)")
        self.image_shift = int(image_shift)
        self.turns = np.array([sharpest_turn(ep) for ep in episodes]) if turn_prob else None
        self.lengths = np.array([len(ep.actions) for ep in episodes])
        self.by_task: dict[str, list[int]] = {}
        self.success_by_task: dict[str, list[int]] = {}
        for i, ep in enumerate(episodes):
            self.by_task.setdefault(ep.task, []).append(i)
            if getattr(ep, "success", False):
                self.success_by_task.setdefault(ep.task, []).append(i)
        self.weights = task_weights([ep.task for ep in episodes], self.lengths, cfg.window_steps, task_share)
        self._text = [self.builder.text_ids(ep.instruction) for ep in episodes]
        self._text_feat = [self.builder.text_features(ep.instruction) for ep in episodes]
        # goals: every context also carries its episode's goal bins (`episode_goal`, GOAL_KEYS)
        self.goals = [episode_goal(ep) for ep in episodes] if goals else None

    def __len__(self) -> int:
        return len(self.episodes)

    def tokens(self, i: int, start: int, n: int, rng: np.random.Generator | None = None):
        """TimestepTokens of steps [start, start+n) of episode i (actions normalised); with `rng` and an
        `image_shift`, the window's images are moved by one random offset (`shift_images`)."""
        ep = self.episodes[i]
        obs = {k: np.asarray(ep.observations[k][start:start + n]) for k in ("image",) + OBS_KEYS}
        if rng is not None and self.image_shift:
            dy, dx = rng.integers(-self.image_shift, self.image_shift + 1, size=2)
            obs["image"] = shift_images(obs["image"], int(dy), int(dx))
        act = self.norm.normalize(np.asarray(ep.actions[start:start + n]), obs["joint_pos"])
        return self.tok.tokenize_steps(obs, act, self.cfg.spec)

    def draw(self, rng: np.random.Generator, prompt: bool | None = None) -> Sample:
        """Episode weighted by its number of windows (within its task's share, see `task_weights`), a window start
        (the episode's first step with probability `start_prob`, else uniform), and a prompt if `prompt` (None: with
        probability `prompt_prob`).

        Why favour the first step: there the arm is at rest and nothing is in the context yet, so the action can
        only come from the image and the instruction (which object to go to). Later steps can largely be predicted
        by continuing the motion seen in the joint velocities and the previous actions, so with uniform starts the
        decision steps are a few percent of the labels (1 in ~18 for reach) and the colour grounding learns slowly
        (the copycat problem of behaviour cloning with history, Wen et al. 2020)."""
        N = self.cfg.window_steps
        i = int(rng.choice(len(self.episodes), p=self.weights))
        start = int(rng.integers(0, max(self.lengths[i] - N, 0) + 1))
        u = rng.random() if (self.start_prob or self.turn_prob) else 1.0
        if u < self.start_prob:
            start = 0
        elif u < self.start_prob + self.turn_prob:  # the turn at any of the window's N positions
            start = int(np.clip(self.turns[i] - rng.integers(0, N), 0, max(self.lengths[i] - N, 0)))
        pe, ps = None, 0
        if prompt is None:
            prompt = bool(self.prompt_prob) and rng.random() < self.prompt_prob
        if prompt and self.cfg.prompt_steps > 0:
            task = self.episodes[i].task
            others = [j for j in self.by_task[task] if j != i] or [i]
            k = self.cfg.prompt_steps
            if rng.random() < 0.5 and self.success_by_task.get(task):
                succ = [j for j in self.success_by_task[task] if j != i] or self.success_by_task[task]
                pe = int(rng.choice(succ))
                ps = max(int(self.lengths[pe]) - k, 0)  # the end of a successful episode: goal conditioning
            else:
                pe = int(rng.choice(others))
                ps = int(rng.integers(0, max(int(self.lengths[pe]) - k, 0) + 1))
        return Sample(i, start, pe, ps)

    def context(self, s: Sample, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        N = self.cfg.window_steps
        steps = self.tokens(s.episode, s.start, N, rng)
        prompt = None
        if s.prompt_episode is not None:
            prompt = self.tokens(s.prompt_episode, s.prompt_start, self.cfg.prompt_steps, rng)
        out = self.builder.build(self._text[s.episode], steps, s.start, prompt, n_steps=N, rng=rng,
                                 text_feat=self._text_feat[s.episode])
        if self.goals is not None:
            out["goal_bin"], out["goal_mask"] = self.goals[s.episode]
        return out

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """`batch_size` random contexts stacked: each array gets a leading batch axis.

        A batch carries prompts in all its contexts (probability `prompt_prob`) or in none: the same share of
        prompted contexts as drawing per context, but three batches in four then have no prompt slots at all, which
        `compact` drops (a third fewer tokens per step for gato-arm)."""
        prompt = bool(self.prompt_prob) and rng.random() < self.prompt_prob
        return collate([self.context(self.draw(rng, prompt), rng) for _ in range(batch_size)])

    def fixed_batches(self, seed: int, n_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Deterministic batches with inference-time patch bins (validation)."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n_batches):  # per-context prompts: every validation batch mixes both kinds
            out.append(collate([self.context(self.draw(rng), None) for _ in range(batch_size)]))
        return out


def collate(contexts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack contexts (compact patches are concatenated: row-major order of `is_image` is kept), then `compact`."""
    out = {k: np.stack([c[k] for c in contexts]) for k in contexts[0] if k != "patches"}
    out["patches"] = np.concatenate([c["patches"] for c in contexts])
    return compact(out)


def compact(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop positions that are padding in every context of the batch (mostly unused prefix slots when no sample
    carries a prompt). Exact: every position's inputs (rotary angles, prefix position, step) are explicit, and
    padding keys are masked anyway."""
    keep = batch["valid"].any(axis=0)
    if keep.all():
        return batch
    return {k: (v if k in UNPOSITIONED_KEYS or k in GOAL_KEYS else v[:, keep])  # images: all valid
            for k, v in batch.items()}


def sharpest_turn(ep: Any) -> int:
    """The step at which the commanded arm motion (the actions minus the joint positions, gripper left out) changes
    most from the step before: in pick_place the turn from lifting the cube toward the bowl, where the second colour
    word decides the direction. Like the first step, it cannot be predicted by continuing the motion so far."""
    a = np.asarray(ep.actions, dtype=np.float64)
    q = np.asarray(ep.observations["joint_pos"], dtype=np.float64)
    if len(a) < 2:
        return 0
    d = a[:, :-1] - q[:, :-1]
    return int(np.argmax(np.linalg.norm(np.diff(d, axis=0), axis=1))) + 1


def task_weights(tasks: Sequence[str], lengths: np.ndarray, window: int,
                 share: Mapping[str, float] | None = None) -> np.ndarray:
    """Probability of drawing each episode: proportional to its number of windows, except that the episodes of each
    task named in `share` together get that share of the draws (the rest goes to the other tasks, again by windows).
    A few demonstrations of a new task next to a large replay set of the old ones (fine-tuning) would otherwise be a
    small share of every batch."""
    w = np.maximum(np.asarray(lengths) - window + 1, 1).astype(np.float64)
    share = dict(share or {})
    tasks = np.asarray(tasks)
    present = sorted(set(tasks.tolist()))
    unknown = sorted(set(share) - set(present))
    if unknown:
        raise ValueError(f"task share for {unknown}: no episode of that task in the data (tasks: {present})")
    bad = {t: p for t, p in share.items() if not 0 < p <= 1}
    total = sum(share.values())
    rest = [t for t in present if t not in share]
    if bad or total > 1 + 1e-9 or (not rest and abs(total - 1) > 1e-9) or (rest and total >= 1 - 1e-9):
        raise ValueError(f"task share {share}: each must lie in (0, 1], summing to less than 1 (to 1 when every "
                         f"task of the data is named; tasks: {present})")
    for t, p in share.items():
        m = tasks == t
        w[m] *= p / w[m].sum()
    if rest:
        m = ~np.isin(tasks, list(share))
        w[m] *= (1 - total) / w[m].sum()
    return w / w.sum()


def split_episodes(n: int, val_fraction: float, seed: int,
                   tasks: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Episode indices for training and validation (at least one of each when n >= 2).

    With `tasks` (one name per episode) the split is drawn per task and every task keeps at least one training
    episode: a task with few episodes (a fine-tune's replay, `--task-share` on it) is never held out whole."""
    rng = np.random.default_rng(seed)
    if tasks is None:
        idx = rng.permutation(n)
        n_val = min(max(int(round(n * val_fraction)), 1), n - 1) if n >= 2 else 0
        return sorted(idx[n_val:].tolist()), sorted(idx[:n_val].tolist())
    names = np.asarray(tasks)
    if len(names) != n:
        raise ValueError(f"{len(names)} task names for {n} episodes")
    val: list[int] = []
    groups = [rng.permutation(np.flatnonzero(names == t)) for t in sorted(set(names.tolist()))]
    for g in groups:
        val += g[:min(int(round(len(g) * val_fraction)), len(g) - 1)].tolist()
    if not val and n >= 2:  # at least one: from the largest task (which keeps one if it has two)
        largest = max(groups, key=len)
        val = [int(largest[0])]
    return sorted(set(range(n)) - set(val)), sorted(val)


def fit_normalizer(episodes: Sequence[Any], mode: str, margin: float = 0.1) -> ActionNormalizer:
    return ActionNormalizer.fit([np.asarray(ep.actions) for ep in episodes],
                                [np.asarray(ep.observations["joint_pos"]) for ep in episodes], mode, margin)


@dataclass
class SyntheticEpisode:
    """An Episode-like object for tests and smoke runs (same attributes as `gato_ros.dataset.Episode`)."""

    observations: dict
    actions: np.ndarray
    instruction: str
    task: str
    seed: int = 0
    success: bool = True
    meta: dict | None = None


def synthetic_episodes(n: int, steps: int, seed: int = 0, image_size: int = 64,
                       tasks: Sequence[str] = ("reach red", "reach blue")) -> list[SyntheticEpisode]:
    """Learnable toy episodes: each joint moves toward a goal that depends on the task and is drawn in the image
    as a coloured square; the action is a small step toward it (like a position-controlled arm)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        task = tasks[e % len(tasks)]
        goal = np.tanh(rng.normal(size=7)) * (0.5 if "red" in task else -0.5)
        goal[6] = 0.02 + 0.02 * (e % 2)
        q = rng.normal(scale=0.3, size=7)
        q[6] = 0.0
        imgs, qs, vs, acts = [], [], [], []
        v = np.zeros(7)
        for _ in range(steps):
            img = np.full((image_size, image_size, 3), 40, np.uint8)
            c = (255, 0, 0) if "red" in task else (0, 0, 255)
            x = int((goal[0] + 1) / 2 * (image_size - 8))
            img[8:16, x:x + 8] = c
            a = q + np.clip(goal - q, -0.05, 0.05)
            imgs.append(img)
            qs.append(q.copy())
            vs.append(v.copy())
            acts.append(a)
            v = (a - q) * 20.0
            q = a
        out.append(SyntheticEpisode(
            {"image": np.stack(imgs), "joint_pos": np.stack(qs), "joint_vel": np.stack(vs)}, np.stack(acts),
            f"{task} goal", task.replace(" ", "_"), seed + e, True,
            {"joint_names": [f"j{i}" for i in range(7)], "control_rate_hz": 20.0,
             "layout": {"target": "square", "receptacle": None,
                        "objects": [{"body": "square", "xy": [0.45, 0.5 * float(goal[0])]}]}},
        ))
    return out
