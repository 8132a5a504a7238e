"""Episode datasets on disk: one compressed NPZ per episode plus a JSON header (numpy only; no torch, no ROS).

Written by `gato-ros collect` (scripted expert in the sim) and, in the same format, from rosbags; read by training
(`gato_ros.model.data`) and `gato-ros dataset info`. In the spirit of robomimic's one-file-per-demo HDF5 and
LeRobot's per-episode chunks, but with nothing beyond numpy.

Layout of a dataset directory:

    DIR/dataset.json                 header, shared by every episode (below)
    DIR/episodes/episode_000000.npz  one file per episode, numbered in write order

`dataset.json`: {"format": "gato_ros.episodes", "version": 1, "joint_names": [7 names], "joint_limits": [[lo, hi]
x 7], "control_rate_hz": 20.0, "image_size": 64, "source": "sim-expert" | "rosbag" | ..., plus free-form
provenance (git commit, env config, creation time)}.

Each `episode_NNNNNN.npz` (np.savez_compressed; loads with allow_pickle=False) holds, for T steps:

| key | dtype, shape | meaning |
|---|---|---|
| `image` | uint8 (T, H, W, 3) | RGB camera image seen before the action of step t |
| `joint_pos` | float64 (T, 7) | joint positions (rad x6, gripper m) at step t, order `joint_names` |
| `joint_vel` | float64 (T, 7) | joint velocities at step t |
| `action` | float64 (T, 7) | absolute position targets sent at step t (the training label) |
| `meta` | 0-d unicode (JSON) | {"instruction", "task", "seed", "success", "steps", ...}; sim episodes add "layout" (objects, target) |

Observation t and action t form one training pair: the action is what the expert commanded after seeing the
observation. Files are written to a temporary name and then linked into place under a fresh number, so a crash
never leaves a half-written episode and two writers never overwrite each other's episodes.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "gato_ros.episodes"
VERSION = 1
HEADER = "dataset.json"
EPISODE_DIR = "episodes"
OBSERVATION_KEYS = ("image", "joint_pos", "joint_vel")
_EPISODE_RE = re.compile(r"^episode_(\d{6,})\.npz$")
# Header fields that every episode of one dataset must agree on.
_SHARED = ("joint_names", "joint_limits", "control_rate_hz", "image_size")


@dataclass
class Episode:
    """One demonstration: T observations and the T actions taken after them."""

    observations: dict[str, np.ndarray]  # "image" (T,H,W,3) uint8, "joint_pos" (T,7), "joint_vel" (T,7) float64
    actions: np.ndarray  # (T, 7) float64 absolute joint targets
    instruction: str
    task: str
    seed: int | None = None
    success: bool = False
    meta: dict = field(default_factory=dict)  # joint_names, joint_limits, control_rate_hz, image_size, source, ...

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Raise ValueError naming the field that is missing, mis-shaped or non-finite."""
        missing = [k for k in OBSERVATION_KEYS if k not in self.observations]
        if missing:
            raise ValueError(f"episode observations lack {missing}; expected keys {list(OBSERVATION_KEYS)}")
        actions = np.asarray(self.actions)
        if actions.ndim != 2 or actions.shape[0] < 1:
            raise ValueError(f"actions must have shape (T >= 1, J), got {actions.shape}")
        t, j = actions.shape
        img = np.asarray(self.observations["image"])
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != t or img.shape[3] != 3:
            raise ValueError(f"observations['image'] must be uint8 (T={t}, H, W, 3), got {img.dtype} {img.shape}")
        for k in ("joint_pos", "joint_vel"):
            a = np.asarray(self.observations[k])
            if a.shape != (t, j):
                raise ValueError(f"observations[{k!r}] must have shape (T={t}, J={j}), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"observations[{k!r}] holds non-finite values")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions hold non-finite values")
        names = self.meta.get("joint_names")
        if names is not None and len(names) != j:
            raise ValueError(f"meta['joint_names'] has {len(names)} names but actions have {j} columns")
        if not isinstance(self.instruction, str) or not isinstance(self.task, str) or not self.task:
            raise ValueError("episode needs a str instruction and a non-empty str task")


def _header_path(root: Path) -> Path:
    return root / HEADER


def read_header(root: str | Path) -> dict:
    """The dataset.json of a dataset directory (ValueError if it is not one)."""
    root = Path(root)
    path = _header_path(root)
    if not path.is_file():
        raise ValueError(f"{root} is not an episode dataset: {HEADER} is missing (write one with `gato-ros collect`)")
    header = json.loads(path.read_text())
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, expected {FORMAT!r}")
    if int(header.get("version", 0)) > VERSION:
        raise ValueError(f"{path} is format version {header['version']}; this gato_ros reads up to {VERSION}")
    return header


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def init_dataset(root: str | Path, meta: dict) -> dict:
    """Create (or check) the header of a dataset directory; returns the header in force.

    An existing header must agree on joint names, limits, control rate and image size: mixing differently shaped
    episodes in one directory is refused rather than silently producing an unusable dataset.
    """
    root = Path(root)
    missing = [k for k in _SHARED if k not in meta]
    if missing:
        raise ValueError(f"dataset meta lacks {missing}; expected {list(_SHARED)} plus optional provenance")
    (root / EPISODE_DIR).mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": VERSION, **_jsonable(meta)}
    path = _header_path(root)
    if path.is_file():
        old = read_header(root)
        for k in _SHARED:
            if _jsonable(old.get(k)) != header.get(k):
                raise ValueError(
                    f"{root} already holds episodes with {k}={old.get(k)!r}; this episode has {header.get(k)!r}. "
                    "Write to a new directory."
                )
        return old
    _atomic_write_text(path, json.dumps(header, indent=2) + "\n")
    return header


def episode_paths(root: str | Path) -> list[Path]:
    """Episode files of a dataset, in index order."""
    d = Path(root) / EPISODE_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _EPISODE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def write_episode(root: str | Path, episode: Episode) -> Path:
    """Validate and append one episode to the dataset at `root` (created if needed); returns its file path."""
    root = Path(root)
    episode.validate()
    header = init_dataset(root, episode.meta)
    t = len(episode)
    size = int(header["image_size"])
    if episode.observations["image"].shape[1:3] != (size, size):
        raise ValueError(
            f"episode images are {episode.observations['image'].shape[1:3]}, the dataset's image_size is {size}"
        )
    meta = {
        "instruction": episode.instruction,
        "task": episode.task,
        "seed": None if episode.seed is None else int(episode.seed),
        "success": bool(episode.success),
        "steps": t,
    }
    meta.update({k: v for k, v in _jsonable(episode.meta).items() if k not in _SHARED and k not in meta})
    folder = root / EPISODE_DIR
    tmp = folder / f".episode.{os.getpid()}.{id(episode)}.tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            image=np.ascontiguousarray(episode.observations["image"], dtype=np.uint8),
            joint_pos=np.asarray(episode.observations["joint_pos"], dtype=np.float64),
            joint_vel=np.asarray(episode.observations["joint_vel"], dtype=np.float64),
            action=np.asarray(episode.actions, dtype=np.float64),
            meta=np.array(json.dumps(meta)),
        )
        f.flush()
        os.fsync(f.fileno())
    try:
        existing = episode_paths(root)
        index = int(_EPISODE_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        while True:
            final = folder / f"episode_{index:06d}.npz"
            try:
                os.link(tmp, final)  # atomic, and fails rather than overwrite another writer's episode
                return final
            except FileExistsError:
                index += 1
    finally:
        tmp.unlink(missing_ok=True)


def _read_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def read_episode(path: str | Path, header: dict | None = None) -> Episode:
    """Load one episode file (the header supplies the shared meta)."""
    path = Path(path)
    header = header if header is not None else read_header(path.parent.parent)
    try:
        with np.load(path, allow_pickle=False) as z:
            obs = {k: z[k] for k in OBSERVATION_KEYS}
            actions = z["action"]
            meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"cannot read episode {path}: {e}") from e
    full = {k: v for k, v in header.items() if k not in ("format", "version")}
    full.update(meta)
    full["path"] = str(path)
    return Episode(obs, actions, meta["instruction"], meta["task"], meta.get("seed"), bool(meta["success"]), full)


class EpisodeDataset(Sequence):
    """The episodes of one dataset directory, loaded on first access (cached unless `cache=False`).

    `tasks` keeps only those tasks; `successful_only` drops failed episodes (both read only the small per-episode
    meta to decide).
    """

    def __init__(self, path: str | Path, tasks: Sequence[str] | None = None, successful_only: bool = False,
                 cache: bool = True):
        self.path = Path(path)
        self.header = read_header(self.path)
        paths = episode_paths(self.path)
        if tasks is not None or successful_only:
            keep = []
            for p in paths:
                m = _read_meta(p)
                if (tasks is None or m["task"] in tasks) and (m["success"] or not successful_only):
                    keep.append(p)
            paths = keep
        self.paths = paths
        self._cache: dict[int, Episode] | None = {} if cache else None

    @property
    def meta(self) -> dict:
        return dict(self.header)

    @property
    def joint_names(self) -> list[str]:
        return list(self.header["joint_names"])

    @property
    def joint_limits(self) -> np.ndarray:
        return np.asarray(self.header["joint_limits"], dtype=np.float64)

    @property
    def image_size(self) -> int:
        return int(self.header["image_size"])

    @property
    def control_rate_hz(self) -> float:
        return float(self.header["control_rate_hz"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        i %= n
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        ep = read_episode(self.paths[i], self.header)
        if self._cache is not None:
            self._cache[i] = ep
        return ep

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]


def dataset_info(path: str | Path) -> dict:
    """Summary of a dataset: {"episodes", "steps", "tasks": {task: {"episodes", "steps", "success_rate"}}, "fps", ...}.

    Reads only the per-episode meta, not the images.
    """
    path = Path(path)
    header = read_header(path)
    tasks: dict[str, dict] = {}
    episodes = steps = successes = 0
    for p in episode_paths(path):
        m = _read_meta(p)
        t = tasks.setdefault(m["task"], {"episodes": 0, "steps": 0, "successes": 0})
        t["episodes"] += 1
        t["steps"] += int(m["steps"])
        t["successes"] += int(bool(m["success"]))
        episodes += 1
        steps += int(m["steps"])
        successes += int(bool(m["success"]))
    for t in tasks.values():
        t["success_rate"] = t["successes"] / t["episodes"]
    return {
        "path": str(path),
        "episodes": episodes,
        "steps": steps,
        "tasks": dict(sorted(tasks.items())),
        "fps": float(header["control_rate_hz"]),
        "success_rate": successes / episodes if episodes else None,
        "image_size": int(header["image_size"]),
        "joint_names": header["joint_names"],
        "source": header.get("source"),
    }


def git_commit() -> str | None:
    """HEAD of the source checkout this module runs from (None outside a git checkout), for provenance."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
