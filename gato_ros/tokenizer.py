"""Gato tokenizer: every modality serialised into one flat sequence (numpy only; shared by training and runtime).

Follows Reed et al., "A Generalist Agent" (2022), Sec. 2.1 and App. B:

- text: here byte-level (UTF-8 bytes are tokens 0..255, then BOS/EOS/PAD). Gato used SentencePiece with 32000
  subwords; our instructions come from a small template grammar, bytes need no trained vocabulary, never meet an
  unknown word, and keep the text vocabulary tiny for the shipped model (`text_vocab_size` may be as small as
  `BYTE_TEXT_VOCAB`). The choice is recorded in `TokenizerConfig.text_tokenizer`.
- continuous values: mu-law companded, `F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)` with mu=100, M=256
  (App. B), clipped to [-1, 1], discretised into `num_bins`=1024 uniform bins, shifted by `text_vocab_size`.
- values already normalised to [-1, 1] (our actions: joint targets scaled by per-joint ranges) skip the mu-law
  and use the same uniform bins directly (`encode_uniform`): companding would waste resolution near the range
  ends, where normalised actions live as often as near zero.
- discrete values: integers in [0, num_bins), shifted by `text_vocab_size` (they share the bin range, as in Gato).
- images: non-overlapping 16x16 patches in raster order, pixels scaled to [-1, 1] then divided by sqrt(16)
  (App. B). Patches are not tokens: the model embeds them with a ResNet block. Images whose size is not a multiple
  of the patch size are an error: resizing is the caller's job (the policy node resizes camera frames to the
  bundle's image size before tokenizing).
- a separator token between observation and action (`separator_token`).

Vocabulary layout (ids):

| range                                         | meaning                         |
|-----------------------------------------------|---------------------------------|
| [0, text_vocab_size)                          | text (bytes 0..255, BOS, EOS, PAD when byte-level) |
| [text_vocab_size, text_vocab_size + num_bins) | continuous / discrete / action bins |
| text_vocab_size + num_bins                    | separator `|`                   |

Timestep layout (canonical order; `TimestepSpec` fixes the sizes; shown for the default 64x64 RGB camera,
7 joint positions, 7 joint velocities and a 7-dof action):

| positions | kind       | content                                    | local_pos | source                 |
|-----------|------------|--------------------------------------------|-----------|------------------------|
| 0..n_t-1  | TEXT       | instruction bytes (only if `text_tokens>0`) | 0..       | `~/instruction`        |
| +0..15    | IMAGE      | 16 patches of 16x16x3 = 768 floats, raster  | next 16   | `/camera/image_raw`    |
| +16..22   | CONTINUOUS | `joint_pos` (rad; gripper m), mu-law         | next 7    | `/joint_states` .position |
| +23..29   | CONTINUOUS | `joint_vel` (rad/s; m/s), mu-law             | next 7    | `/joint_states` .velocity |
| +30       | SEPARATOR  | `|`                                          | next 1    |                        |
| +31..37   | ACTION     | normalised joint targets, uniform bins       | -1 (none) | commands published     |

Continuous observation keys are laid out in lexicographic order (Gato). `local_pos` is the position of a token
within the observation part of its timestep, used for Gato's learned local position encodings; action tokens get
none (-1). `kinds` doubles as the loss mask: the loss is taken on ACTION (and TEXT, if predicted) only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

# Token kinds, one per sequence position.
TEXT, IMAGE, CONTINUOUS, DISCRETE, SEPARATOR, ACTION = range(6)
KIND_NAMES = ("text", "image", "continuous", "discrete", "separator", "action")

# Byte-level text: 256 byte values plus three specials.
BYTE_BOS, BYTE_EOS, BYTE_PAD = 256, 257, 258
BYTE_TEXT_VOCAB = 259


@dataclass
class TokenizerConfig:
    """Tokenizer hyper-parameters. Defaults are the Gato paper's (App. B); the shipped model may use a smaller
    `text_vocab_size` (>= 259 for byte-level text)."""

    text_vocab_size: int = 32000  # ids below this are text tokens
    num_bins: int = 1024  # uniform bins for continuous values on [-1, 1]
    mu: float = 100.0  # mu-law companding parameter (Gato App. B)
    M: float = 256.0  # mu-law scale: |x| = M maps to 1 before clipping (Gato App. B)
    patch_size: int = 16  # square image patches (Gato: 16x16)
    text_tokenizer: str = "bytes"  # how instructions become text tokens; only "bytes" is implemented

    def __post_init__(self) -> None:
        if self.text_tokenizer != "bytes":
            raise ValueError(f"text_tokenizer={self.text_tokenizer!r}: only 'bytes' is supported")
        if self.text_vocab_size < BYTE_TEXT_VOCAB:
            raise ValueError(
                f"text_vocab_size={self.text_vocab_size}: byte-level text needs at least {BYTE_TEXT_VOCAB}"
            )
        if self.num_bins < 2:
            raise ValueError(f"num_bins={self.num_bins}: need at least 2 bins")
        if not (self.mu > 0 and self.M > 0):
            raise ValueError(f"mu={self.mu}, M={self.M}: both must be positive")
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size}: must be a positive integer")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> "TokenizerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TokenizerConfig: unknown fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "TokenizerConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class TimestepSpec:
    """The shape of one timestep's observation and action, which fixes the token layout.

    `image_shape` is (H, W, C) or None for no camera; `continuous` maps observation key -> number of values;
    `text_tokens` is the number of text positions repeated in every timestep (0: the instruction is given once,
    as a prefix, by the caller).
    """

    image_shape: tuple[int, int, int] | None = (64, 64, 3)
    continuous: Mapping[str, int] = field(default_factory=lambda: {"joint_pos": 7, "joint_vel": 7})
    action_size: int = 7
    text_tokens: int = 0

    def __post_init__(self) -> None:
        if self.image_shape is not None:
            if len(self.image_shape) != 3 or min(self.image_shape) < 1:
                raise ValueError(f"image_shape={self.image_shape}: expected (H, W, C) with positive sizes")
        for key, size in self.continuous.items():
            if int(size) < 1:
                raise ValueError(f"continuous[{key!r}]={size}: each observation needs at least one value")
        if self.action_size < 1:
            raise ValueError(f"action_size={self.action_size}: need at least one action dimension")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens={self.text_tokens}: must be >= 0")

    def __hash__(self) -> int:  # `continuous` is a dict: hash its sorted items (layouts are cached per spec)
        return hash((self.image_shape, tuple(sorted(self.continuous.items())), self.action_size, self.text_tokens))

    @property
    def continuous_keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.continuous))  # Gato: lexicographic order of observation keys

    def to_dict(self) -> dict:
        return {
            "image_shape": list(self.image_shape) if self.image_shape is not None else None,
            "continuous": {k: int(self.continuous[k]) for k in self.continuous_keys},
            "action_size": int(self.action_size),
            "text_tokens": int(self.text_tokens),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "TimestepSpec":
        shape = data.get("image_shape")
        return cls(
            image_shape=tuple(int(s) for s in shape) if shape is not None else None,
            continuous={str(k): int(v) for k, v in data["continuous"].items()},
            action_size=int(data["action_size"]),
            text_tokens=int(data.get("text_tokens", 0)),
        )


@dataclass(frozen=True)
class TimestepLayout:
    """Per-position metadata of one timestep (constant for a given spec; computed once).

    All arrays have length `length`. `patch_row`/`patch_col` are the patch's grid cell (-1 elsewhere);
    `grid` is the (rows, cols) patch grid of the image.
    """

    kinds: np.ndarray  # (L,) uint8
    local_pos: np.ndarray  # (L,) int64, -1 on action positions
    patch_row: np.ndarray  # (L,) int64
    patch_col: np.ndarray  # (L,) int64
    grid: tuple[int, int]
    slices: dict[str, slice]  # "text", "image", each continuous key, "separator", "action"

    @property
    def length(self) -> int:
        return int(self.kinds.shape[0])

    @property
    def observation_length(self) -> int:
        """Tokens before the actions: the prefill size of one control tick."""
        return self.slices["action"].start


@dataclass
class TimestepTokens:
    """Tokens of T timesteps. IMAGE positions hold `PAD` in `tokens`; their content is in `patches`."""

    tokens: np.ndarray  # (T, L) int64
    patches: np.ndarray  # (T, P, patch*patch*C) float32
    layout: TimestepLayout


class GatoTokenizer:
    """Turns observations, actions and text into Gato tokens and back. Stateless; cheap to share."""

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        c = self.config
        self._log_norm = float(np.log(c.M * c.mu + 1.0))
        self._layouts: dict[TimestepSpec, TimestepLayout] = {}

    # ------------------------------------------------------------------ vocabulary
    @property
    def bin_offset(self) -> int:
        return self.config.text_vocab_size

    @property
    def separator_token(self) -> int:
        return self.config.text_vocab_size + self.config.num_bins

    @property
    def pad_token(self) -> int:
        return BYTE_PAD

    @property
    def vocab_size(self) -> int:
        return self.config.text_vocab_size + self.config.num_bins + 1

    # ------------------------------------------------------------------ continuous values
    def mu_law(self, values: np.ndarray) -> np.ndarray:
        """Gato's companding F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1); not clipped."""
        x = np.asarray(values, dtype=np.float64)
        return np.sign(x) * np.log1p(np.abs(x) * self.config.mu) / self._log_norm

    def inverse_mu_law(self, companded: np.ndarray) -> np.ndarray:
        y = np.asarray(companded, dtype=np.float64)
        return np.sign(y) * np.expm1(np.abs(y) * self._log_norm) / self.config.mu

    def encode_uniform(self, values, name: str = "values") -> np.ndarray:
        """Values on [-1, 1] (clipped) -> bin tokens, without companding. Use for normalised actions."""
        x = _finite(values, name)
        n = self.config.num_bins
        idx = np.floor((np.clip(x, -1.0, 1.0) + 1.0) * (n / 2.0)).astype(np.int64)
        np.minimum(idx, n - 1, out=idx)  # x == 1 falls on the upper edge: keep it in the last bin
        return idx + self.bin_offset

    def decode_uniform(self, tokens) -> np.ndarray:
        """Bin tokens -> bin centres on [-1, 1]."""
        idx = self._bin_index(tokens)
        return (idx + 0.5) * (2.0 / self.config.num_bins) - 1.0

    def encode_continuous(self, values, name: str = "values") -> np.ndarray:
        """Continuous values -> mu-law companded, clipped to [-1, 1], 1024 uniform bins, shifted (Gato App. B)."""
        x = _finite(values, name)
        return self.encode_uniform(self.mu_law(x), name)

    def decode_continuous(self, tokens) -> np.ndarray:
        """Inverse of `encode_continuous` at bin centres (values beyond +-M come back as the edge bin's centre)."""
        return self.inverse_mu_law(self.decode_uniform(tokens))

    def encode_discrete(self, values, name: str = "values") -> np.ndarray:
        x = np.asarray(values)
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name}: discrete values must be integers, got dtype {x.dtype}")
        if x.size and (x.min() < 0 or x.max() >= self.config.num_bins):
            raise ValueError(f"{name}: discrete values must lie in [0, {self.config.num_bins}), got {x.min()}..{x.max()}")
        return x.astype(np.int64) + self.bin_offset

    def _bin_index(self, tokens) -> np.ndarray:
        t = np.asarray(tokens)
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens: expected integer ids, got dtype {t.dtype}")
        idx = t.astype(np.int64) - self.bin_offset
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.num_bins):
            raise ValueError(
                f"tokens: bin tokens must lie in [{self.bin_offset}, {self.bin_offset + self.config.num_bins}), "
                f"got {int(t.min())}..{int(t.max())}"
            )
        return idx

    # ------------------------------------------------------------------ text
    def encode_text(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        """UTF-8 bytes as tokens, wrapped in BOS/EOS; truncated (keeping EOS) to `max_tokens` if given."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected str, got {type(text).__name__}")
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        out = np.concatenate(([BYTE_BOS], ids, [BYTE_EOS]))
        if max_tokens is not None:
            if max_tokens < 2:
                raise ValueError(f"max_tokens={max_tokens}: need room for BOS and EOS")
            if out.size > max_tokens:
                out = np.concatenate((out[: max_tokens - 1], [BYTE_EOS]))
        return out

    def decode_text(self, tokens) -> str:
        t = np.asarray(tokens, dtype=np.int64)
        return bytes(int(v) for v in t if v < 256).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ images
    def image_patches(self, image) -> np.ndarray:
        """uint8 (H, W, C) -> float32 (num_patches, patch*patch*C), raster order, pixels to [-1,1] / sqrt(patch).

        Batched input (..., H, W, C) gives (..., num_patches, patch*patch*C).
        """
        img = np.asarray(image)
        if img.dtype != np.uint8:
            raise ValueError(f"image: expected dtype uint8, got {img.dtype}")
        if img.ndim < 3:
            raise ValueError(f"image: expected shape (H, W, C), got {img.shape}")
        p = self.config.patch_size
        *lead, h, w, c = img.shape
        if h % p or w % p:
            raise ValueError(
                f"image: size {h}x{w} is not a multiple of patch_size={p}; resize it first "
                f"(e.g. to the bundle's image size)"
            )
        rows, cols = h // p, w // p
        x = img.reshape(*lead, rows, p, cols, p, c)
        x = np.moveaxis(x, -4, -3)  # (..., rows, cols, p, p, c)
        x = x.reshape(*lead, rows * cols, p * p * c).astype(np.float32)
        # [0, 255] -> [-1, 1] -> / sqrt(patch_size), folded into one multiply-add.
        scale = np.float32(2.0 / 255.0 / np.sqrt(p))
        x *= scale
        x -= np.float32(1.0 / np.sqrt(p))
        return x

    # ------------------------------------------------------------------ timesteps
    def layout(self, spec: TimestepSpec) -> TimestepLayout:
        """The (cached) per-position layout of one timestep for `spec`."""
        cached = self._layouts.get(spec)
        if cached is not None:
            return cached
        kinds: list[int] = []
        slices: dict[str, slice] = {}
        patch_row: list[int] = []
        patch_col: list[int] = []

        def add(name: str, kind: int, n: int, rows=None, cols=None) -> None:
            start = len(kinds)
            kinds.extend([kind] * n)
            patch_row.extend(rows if rows is not None else [-1] * n)
            patch_col.extend(cols if cols is not None else [-1] * n)
            slices[name] = slice(start, start + n)

        add("text", TEXT, spec.text_tokens)
        grid = (0, 0)
        if spec.image_shape is not None:
            h, w, _ = spec.image_shape
            p = self.config.patch_size
            if h % p or w % p:
                raise ValueError(f"image_shape={spec.image_shape}: not a multiple of patch_size={p}")
            grid = (h // p, w // p)
            rr, cc = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
            add("image", IMAGE, grid[0] * grid[1], rr.tolist(), cc.tolist())
        else:
            add("image", IMAGE, 0)
        for key in spec.continuous_keys:
            add(key, CONTINUOUS, int(spec.continuous[key]))
        add("separator", SEPARATOR, 1)
        add("action", ACTION, spec.action_size)

        kinds_arr = np.asarray(kinds, dtype=np.uint8)
        local = np.where(kinds_arr == ACTION, -1, np.arange(len(kinds))).astype(np.int64)
        out = TimestepLayout(
            kinds=kinds_arr,
            local_pos=local,
            patch_row=np.asarray(patch_row, dtype=np.int64),
            patch_col=np.asarray(patch_col, dtype=np.int64),
            grid=grid,
            slices=slices,
        )
        for arr in (out.kinds, out.local_pos, out.patch_row, out.patch_col):
            arr.setflags(write=False)
        self._layouts[spec] = out
        return out

    def tokenize_steps(
        self,
        observations: Mapping[str, np.ndarray],
        actions: np.ndarray | None,
        spec: TimestepSpec,
        text_tokens: np.ndarray | None = None,
    ) -> TimestepTokens:
        """Tokenize T timesteps at once (T may be 1).

        observations: {"image": uint8 (T, H, W, C), key: (T, n_key) for each continuous key of `spec`}.
        actions: (T, action_size) already normalised to [-1, 1], or None (action positions are then PAD, as at
        inference time before the model has sampled them).
        text_tokens: (spec.text_tokens,) ids repeated in every timestep, required iff spec.text_tokens > 0.
        """
        lay = self.layout(spec)
        expected = set(spec.continuous) | ({"image"} if spec.image_shape is not None else set())
        unknown = set(observations) - expected
        if unknown:
            raise ValueError(
                f"observations: unknown keys {sorted(unknown)}; this layout expects {sorted(expected)}"
            )
        missing = expected - set(observations)
        if missing:
            raise ValueError(f"observations: missing keys {sorted(missing)}; this layout expects {sorted(expected)}")

        t_steps = None
        patches = None
        if spec.image_shape is not None:
            img = np.asarray(observations["image"])
            if img.ndim != 4 or tuple(img.shape[1:]) != tuple(spec.image_shape):
                raise ValueError(
                    f"observations['image']: expected shape (T, {', '.join(map(str, spec.image_shape))}), "
                    f"got {img.shape}"
                )
            t_steps = img.shape[0]
            patches = self.image_patches(img)  # (T, P, D)

        keys = spec.continuous_keys
        values = []
        for key in keys:
            val = np.asarray(observations[key])
            n = int(spec.continuous[key])
            if val.ndim != 2 or val.shape[1] != n:
                raise ValueError(f"observations[{key!r}]: expected shape (T, {n}), got {val.shape}")
            if t_steps is None:
                t_steps = val.shape[0]
            elif val.shape[0] != t_steps:
                raise ValueError(f"observations[{key!r}]: {val.shape[0]} steps, but other inputs have {t_steps}")
            if not np.isfinite(val).all():  # checked per key so the error names the field
                _finite(val, f"observations[{key!r}]")
            values.append(val)
        if t_steps is None:
            raise ValueError("observations: the layout has neither an image nor continuous values")
        tokens = np.full((t_steps, lay.length), self.pad_token, dtype=np.int64)
        if values:
            # Keys are contiguous and sorted in the layout: encode them all in one call.
            first, last = lay.slices[keys[0]].start, lay.slices[keys[-1]].stop
            tokens[:, first:last] = self.encode_continuous(np.concatenate(values, axis=1), "observations")
        if patches is None:
            patches = np.zeros((t_steps, 0, 0), dtype=np.float32)

        if spec.text_tokens:
            if text_tokens is None or np.shape(text_tokens) != (spec.text_tokens,):
                raise ValueError(
                    f"text_tokens: expected {spec.text_tokens} ids per timestep, got "
                    f"{None if text_tokens is None else np.shape(text_tokens)}"
                )
            text = np.asarray(text_tokens, dtype=np.int64)
            if text.min() < 0 or text.max() >= self.config.text_vocab_size:
                raise ValueError(f"text_tokens: ids must lie in [0, {self.config.text_vocab_size})")
            tokens[:, lay.slices["text"]] = text
        tokens[:, lay.slices["separator"]] = self.separator_token
        if actions is not None:
            act = np.asarray(actions)
            if act.shape != (t_steps, spec.action_size):
                raise ValueError(f"actions: expected shape ({t_steps}, {spec.action_size}), got {act.shape}")
            tokens[:, lay.slices["action"]] = self.encode_uniform(act, "actions")
        return TimestepTokens(tokens=tokens, patches=patches, layout=lay)


def _finite(values, name: str) -> np.ndarray:
    """float64 view of `values`; non-finite input is an error, never a silent token."""
    x = np.asarray(values)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))
        raise ValueError(f"{name}: non-finite value {x[tuple(bad[0])]} at index {tuple(int(i) for i in bad[0])}")
    return x
