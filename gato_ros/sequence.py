"""From episodes to model inputs: the one place that lays out a Gato context (numpy only).

Training (`gato_ros.model.data`), the torch reference and the ONNX runtime (`gato_ros.runtime`) all build their
inputs here, so they cannot drift apart.

Context layout (one sequence, length P + N*S):

| region   | size      | content                                                     | attention              |
|----------|-----------|-------------------------------------------------------------|------------------------|
| prefix   | P slots   | instruction bytes (BOS..EOS), then an optional Gato prompt   | causal among itself    |
|          |           | of `prompt_steps` whole timesteps; unused slots are padding |                        |
| episode  | N*S       | timesteps t0..t0+N-1, each S tokens (tokenizer layout:       | causal, and only the   |
|          |           | 16 patches, joint_pos 7, joint_vel 7, separator, 7 actions)  | last `window_steps`    |

Position scheme and why the deployed rolling context equals training:

- Episode tokens carry rotary positions (RoPE, Su et al. 2021) at `step * S + offset`. Rotary attention scores
  depend only on the distance between query and key, so which absolute step a training window starts at is
  irrelevant, and a deployed episode can run for ever.
- Every episode token attends to the timesteps `step-window_steps+1 .. step` only (a sliding window, as in
  Mistral 7B, Jiang et al. 2023). At deployment the KV cache is therefore a ring buffer of `window_steps`
  timestep slots: timestep t overwrites the slots of timestep t-window_steps, which no later token may see.
  Nothing is ever re-prefilled and every tick costs the same. Because the torch model is trained with exactly
  this mask, the ring-buffer runtime computes exactly the torch model's function on the whole episode (tested
  token for token over an episode 20x longer than the window).
- The pinned prefix has no rotary positions: its tokens get learned absolute prefix-position embeddings, and
  scores between an episode query and a prefix key use the unrotated query and key. The instruction is thus
  equally "close" to every timestep, however long the episode runs, and it is encoded once per episode
  (`set_instruction`), not repeated in every timestep.
- Observation tokens add Gato's learned local position (index within the timestep); action tokens have none
  (Gato Sec. 2.2). Image patches add learned row/column encodings of their quantised interval: a random index
  inside the interval in training, the interval's mean at inference (Gato App. C.2).

Actions (`ActionNormalizer`): joint targets are mapped per joint to [-1, 1] with ranges taken from the training
data (plus a margin), then to uniform bins (no mu-law). In "delta" mode the normalised quantity is
`target - joint_pos`: our position-controlled arm moves a little each tick, so deltas span a small range and the
1024 bins become fine (a few hundredths of a milliradian), and the absolute command inherits the exact measured
joint position instead of the model's coarse mu-law view of it (about 0.02 rad per bin at 1 rad).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gato_ros.tokenizer import GatoTokenizer, TimestepTokens

IGNORE = -100  # target of positions without a loss


# ---------------------------------------------------------------------------------------------- actions
@dataclass
class ActionNormalizer:
    """Per-joint affine map between joint targets and [-1, 1] (see module docstring for the modes)."""

    mode: str  # "delta" | "absolute"
    low: np.ndarray  # (A,) value mapped to -1
    high: np.ndarray  # (A,) value mapped to +1

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, dtype=np.float64)
        self.high = np.asarray(self.high, dtype=np.float64)
        if self.mode not in ("delta", "absolute"):
            raise ValueError(f"ActionNormalizer.mode={self.mode!r}: expected 'delta' or 'absolute'")
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"ActionNormalizer: low {self.low.shape} and high {self.high.shape} must be equal (A,)")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.high > self.low)):
            raise ValueError(f"ActionNormalizer: need finite low < high per joint, got low={self.low} high={self.high}")

    @classmethod
    def fit(cls, actions: list[np.ndarray], joint_pos: list[np.ndarray], mode: str, margin: float = 0.1,
            min_half_range: float = 1e-3) -> "ActionNormalizer":
        """Ranges from the data: [min, max] per joint widened by `margin` of the span on each side."""
        if mode == "delta":
            vals = np.concatenate([np.asarray(a) - np.asarray(q)[:, : np.shape(a)[1]] for a, q in zip(actions, joint_pos)])
        else:
            vals = np.concatenate([np.asarray(a) for a in actions])
        lo, hi = vals.min(axis=0), vals.max(axis=0)
        span = hi - lo
        lo, hi = lo - margin * span, hi + margin * span
        mid = (lo + hi) / 2
        half = np.maximum((hi - lo) / 2, min_half_range)
        return cls(mode, mid - half, mid + half)

    def normalize(self, actions: np.ndarray, joint_pos: np.ndarray) -> np.ndarray:
        """(..., A) joint targets -> (..., A) in [-1, 1] (clipped)."""
        a = np.asarray(actions, dtype=np.float64)
        if self.mode == "delta":
            a = a - np.asarray(joint_pos, dtype=np.float64)[..., : a.shape[-1]]
        return np.clip(2.0 * (a - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0)

    def denormalize(self, normalized: np.ndarray, joint_pos: np.ndarray) -> np.ndarray:
        """(..., A) values in [-1, 1] -> (..., A) joint targets."""
        a = self.low + (np.asarray(normalized, dtype=np.float64) + 1.0) * 0.5 * (self.high - self.low)
        if self.mode == "delta":
            a = a + np.asarray(joint_pos, dtype=np.float64)[..., : a.shape[-1]]
        return a

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ActionNormalizer":
        return cls(str(data["mode"]), np.asarray(data["low"]), np.asarray(data["high"]))


# ---------------------------------------------------------------------------------------------- positions
def rope_tables(positions: np.ndarray, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (..., head_dim/2) float32 of rotary angles `pos * base^(-2i/head_dim)`.

    Computed in float64 and rounded once, so a position of 10^5 is as exact as position 1 and torch, ONNX and the
    runtime share bit-identical tables.
    """
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (head_dim/2,)
    ang = np.asarray(positions, dtype=np.float64)[..., None] * inv
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope_full(cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-width tables for the exported graphs: cos_f = [cos, cos], sin_f = [-sin, sin] (..., head_dim), so that
    rope(x) = x * cos_f + swap_halves(x) * sin_f -- the same products and sums as the rotate-half form."""
    return np.concatenate((cos, cos), -1), np.concatenate((-sin, sin), -1)


def patch_position_bins(rows: np.ndarray, cols: np.ndarray, grid: tuple[int, int], pos_bins: int,
                        rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gato App. C.2 patch position encodings: patch row r of n spans [r/n, (r+1)/n), quantised to `pos_bins`
    intervals; training draws a random bin inside the span (rng given), inference takes the span's mean bin."""
    def one(idx: np.ndarray, n: int) -> np.ndarray:
        lo = (idx * pos_bins) // n
        hi = np.maximum(((idx + 1) * pos_bins) // n, lo + 1)  # exclusive
        if rng is None:
            return (lo + hi - 1) // 2
        return rng.integers(lo, hi)

    return one(np.asarray(rows), grid[0]), one(np.asarray(cols), grid[1])


# ---------------------------------------------------------------------------------------------- instruction
def instruction_features(text: str, n: int) -> np.ndarray:
    """(n,) float32 bag of hashed word unigrams and bigrams of `text` (1.0 where a hash lands), the input of the
    instruction-conditioned patch embedding (`GatoConfig.instruction_features`).

    Bigrams keep the roles that a bag of words loses ("yellow cube ... red bowl" vs "red cube ... yellow bowl").
    Hashing (CRC-32, stable across processes and machines) needs no vocabulary, so fine-tuning on new words works
    with the same input size; words are lower-cased runs of letters and digits."""
    out = np.zeros(n, np.float32)
    if n <= 0:
        return out
    words = re.findall(r"[a-z0-9]+", text.lower())
    keys = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
    for k in keys:
        out[zlib.crc32(k.encode()) % n] = 1.0
    return out


# ---------------------------------------------------------------------------------------------- sequences
# Context arrays without a position axis: the compact image patches (one row per image position) and the
# per-context instruction features. Slicing or compacting positions leaves them alone.
UNPOSITIONED_KEYS = ("patches", "text_feat")


class ContextBuilder:
    """Builds the per-position model inputs of a context (see the module docstring) for one config."""

    def __init__(self, cfg, tokenizer: GatoTokenizer | None = None):
        self.cfg = cfg
        self.tok = tokenizer or GatoTokenizer(cfg.tokenizer)
        self.layout = self.tok.layout(cfg.spec)
        lay = self.layout
        self.S = cfg.step_tokens
        self.P = cfg.prefix_slots
        if lay.length != self.S:
            raise ValueError(f"tokenizer layout has {lay.length} tokens per step, config expects {self.S}")
        self.obs_len = lay.observation_length
        self.local_pad = cfg.observation_tokens  # local-position row that stays zero (actions, text)
        self.prefix_pad = self.P  # prefix-position row that stays zero (episode tokens)
        self.local_pos = np.where(lay.local_pos < 0, self.local_pad, lay.local_pos).astype(np.int64)  # (S,)
        self.is_image = lay.kinds == 1  # IMAGE
        self.image_slots = np.flatnonzero(self.is_image)  # (n_patches,)
        self.patch_rows = lay.patch_row[self.image_slots]
        self.patch_cols = lay.patch_col[self.image_slots]
        self.eval_row_bin, self.eval_col_bin = self.step_patch_bins(None)

    def step_patch_bins(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(S,) row and column bins for one timestep (0 at non-image positions)."""
        row = np.zeros(self.S, np.int64)
        col = np.zeros(self.S, np.int64)
        if self.image_slots.size:
            r, c = patch_position_bins(self.patch_rows, self.patch_cols, self.layout.grid, self.cfg.pos_bins, rng)
            row[self.image_slots], col[self.image_slots] = r, c
        return row, col

    @staticmethod
    def embed_inputs(patches: np.ndarray, is_image: np.ndarray, row_bin: np.ndarray,
                     col_bin: np.ndarray) -> dict[str, np.ndarray]:
        """The exported prefill's patch inputs for T positions (`GatoEmbedding.forward_compact`) from a context's
        (T,) `is_image`, `row_bin`, `col_bin` and its patches (at least one per image position, in order, as
        contexts hold them): patches (N, p*p*C) of the N image positions, their bins, and `embed_index` (T,), the
        row of [token embeddings; patch embeddings] each position takes. Without image positions one zero patch row
        that no position takes keeps the shapes non-empty."""
        T, rows = len(is_image), np.flatnonzero(is_image)
        index = np.arange(T, dtype=np.int64)
        index[rows] = T + np.arange(len(rows))
        n = max(len(rows), 1)
        out = {"patches": np.zeros((n, patches.shape[-1]), np.float32),
               "patch_row_bin": np.zeros(n, np.int64), "patch_col_bin": np.zeros(n, np.int64)}
        out["patches"][:len(rows)] = patches[:len(rows)]
        out["patch_row_bin"][:len(rows)] = row_bin[rows]
        out["patch_col_bin"][:len(rows)] = col_bin[rows]
        return {**out, "embed_index": index}

    def text_ids(self, instruction: str) -> np.ndarray:
        return self.tok.encode_text(instruction, max_tokens=self.cfg.max_text_tokens)

    def text_features(self, instruction: str) -> np.ndarray:
        """(instruction_features,) input of the instruction-conditioned patch embedding (empty when off)."""
        return instruction_features(instruction, self.cfg.instruction_features)

    def empty(self, n_steps: int) -> dict[str, np.ndarray]:
        """Arrays for a context of P prefix slots and `n_steps` timesteps, all padding."""
        L = self.P + n_steps * self.S
        half = self.cfg.head_dim // 2
        return {
            "tokens": np.full(L, self.tok.pad_token, np.int64),
            "patches": np.zeros((0, self.cfg.patch_dim), np.float32),  # (n_image_positions, p*p*C), in order
            "is_image": np.zeros(L, bool),
            "local_pos": np.full(L, self.local_pad, np.int64),
            "row_bin": np.zeros(L, np.int64),
            "col_bin": np.zeros(L, np.int64),
            "prefix_pos": np.full(L, self.prefix_pad, np.int64),
            "rope_cos": np.ones((L, half), np.float32),
            "rope_sin": np.zeros((L, half), np.float32),
            "is_prefix": np.zeros(L, bool),
            "step": np.full(L, -1, np.int64),
            "valid": np.zeros(L, bool),
            "target": np.full(L, IGNORE, np.int64),
            "text_feat": np.zeros(self.cfg.instruction_features, np.float32),  # per context, not per position
        }

    def _put_steps(self, out: dict, start: int, steps: TimestepTokens, first_step: int, prefix: bool,
                   rng: np.random.Generator | None) -> None:
        """Write all timesteps of `steps` (absolute indices first_step, first_step+1, ...) at `start`."""
        S, n = self.S, steps.tokens.shape[0]
        sl = slice(start, start + n * S)
        out["tokens"][sl] = steps.tokens.reshape(-1)
        out["local_pos"][sl] = np.tile(self.local_pos, n)
        out["valid"][sl] = True
        out["is_image"][sl] = np.tile(self.is_image, n)
        if self.image_slots.size:  # compact: only image positions carry pixels (steps are written in order)
            out["patches"] = np.concatenate((out["patches"], steps.patches.reshape(-1, self.cfg.patch_dim)))
        for k in range(n):
            r, c = self.step_patch_bins(rng)
            out["row_bin"][start + k * S: start + (k + 1) * S] = r
            out["col_bin"][start + k * S: start + (k + 1) * S] = c
        if prefix:
            out["is_prefix"][sl] = True
            out["prefix_pos"][sl] = np.arange(start, start + n * S)
        else:
            t = first_step + np.arange(n, dtype=np.int64)
            pos = (t[:, None] * S + np.arange(S)).reshape(-1)
            out["rope_cos"][sl], out["rope_sin"][sl] = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base)
            out["step"][sl] = np.repeat(t, S)
            # Targets: the separator predicts action 1, action j predicts action j+1 (Gato: loss on actions only).
            act = steps.tokens[:, self.obs_len:] - self.tok.bin_offset  # (n, A)
            if np.all((act >= 0) & (act < self.cfg.tokenizer.num_bins)):
                tgt = out["target"][sl].reshape(n, S)
                tgt[:, self.obs_len - 1: S - 1] = act
                out["target"][sl] = tgt.reshape(-1)

    def build(self, instruction_ids: np.ndarray, steps: TimestepTokens, first_step: int = 0,
              prompt: TimestepTokens | None = None, n_steps: int | None = None,
              rng: np.random.Generator | None = None, text_feat: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One context: prefix (instruction ids, optional prompt timesteps) + the episode timesteps `steps`,
        which are consecutive and start at absolute step `first_step` of their episode.

        `n_steps` pads the episode region to a fixed number of timesteps for batching; `rng` draws training-time
        patch position bins (None: inference bins). `text_feat`: `text_features(instruction)`, required when the
        model conditions its patch embedding on the instruction.
        """
        n = steps.tokens.shape[0]
        out = self.empty(n_steps if n_steps is not None else n)
        if self.cfg.instruction_features:
            if text_feat is None:
                raise ValueError("this model conditions its patch embedding on the instruction: pass "
                                 "text_feat=ContextBuilder.text_features(instruction)")
            out["text_feat"] = np.asarray(text_feat, np.float32).reshape(self.cfg.instruction_features)
        n_text = len(instruction_ids)
        if n_text > self.cfg.max_text_tokens:
            raise ValueError(f"instruction: {n_text} tokens, the model takes at most {self.cfg.max_text_tokens}")
        out["tokens"][:n_text] = instruction_ids
        out["prefix_pos"][:n_text] = np.arange(n_text)
        out["is_prefix"][:n_text] = True
        out["valid"][:n_text] = True
        if prompt is not None and prompt.tokens.shape[0]:
            if prompt.tokens.shape[0] > self.cfg.prompt_steps:
                raise ValueError(
                    f"prompt: {prompt.tokens.shape[0]} timesteps, the model takes at most {self.cfg.prompt_steps}"
                )
            self._put_steps(out, n_text, prompt, 0, True, rng)
        if n:
            self._put_steps(out, self.P, steps, first_step, False, rng)
        return out
