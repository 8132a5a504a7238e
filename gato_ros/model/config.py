"""Typed model configuration and named presets (torch-free, so the bundle and runtime can read it).

Presets:

| name         | layers | width | heads | FF   | window (timesteps) | text vocab | use                              |
|--------------|--------|-------|-------|------|--------------------|------------|----------------------------------|
| `gato-tiny`  | 2      | 64    | 4     | 128  | 3                  | bytes      | unit tests (seconds on a CPU)    |
| `gato-small` | 4      | 256   | 8     | 1024 | 6                  | bytes      | CPU benchmark preset             |
| `gato-arm`   | 4      | 128   | 4     | 512  | 4                  | bytes      | arm models (`-film-coord`: shipped) |
| `gato-79m`   | 8      | 768   | 24    | 3072 | 16                 | 32000      | Gato paper's smallest (Table 1) |

`gato-79m` keeps the paper's 32000-token text vocabulary: its 24.6M embedding rows plus 8 x 12 x 768^2 = 56.6M
block weights are the paper's 79M parameters. The byte-level presets use the 259-token byte vocabulary.

`gato-arm-film` also conditions its patch embedding on the instruction (`instruction_features`, FiLM),
`gato-arm-film-norm` normalises the patch embeddings too, and `gato-arm-film-coord` adds CoordConv channels. The
shipped bundle is `gato-arm-film-coord`, trained on the 2-core CPU by `make model` (the model card). On that CPU
none of these presets learned to ground the colour word within 90 minutes until training added the auxiliary goal
loss (`train --goal-weight`); `python -m gato_ros.model.grounding` checks a model for it in a minute.

The context the model attends to at every token is the *pinned prefix* (instruction bytes, optionally a Gato
prompt of `prompt_steps` timesteps) plus the last `window_steps` timesteps; see `gato_ros.sequence` for why this
sliding window makes the deployed KV-cache ring buffer compute exactly what training computes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from gato_ros.tokenizer import BYTE_TEXT_VOCAB, TimestepSpec, TokenizerConfig

ACTION_MODES = ("delta", "absolute")


@dataclass
class GatoConfig:
    """Architecture, context and data layout of one Gato-style model. Written into checkpoints and bundles."""

    name: str = "gato-small"
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 8
    d_ff: int = 1024
    window_steps: int = 6  # timesteps visible to every token (sliding window; the KV ring buffer size)
    max_text_tokens: int = 48  # instruction bytes incl. BOS/EOS, pinned at the start of the context
    prompt_steps: int = 2  # timesteps of a Gato prompt episode in the pinned prefix (0 disables prompting)
    patch_channels: int = 32  # ResNet-v2 patch block width
    patch_groups: int = 8  # GroupNorm groups in the patch block
    patch_stem_stride: int = 4  # stem conv kernel = stride: 16x16 patch -> 4x4 feature map
    pos_bins: int = 128  # Gato App. C.2: patch row/col positions quantised into 128 intervals
    rope_base: float = 10000.0
    dropout: float = 0.0
    action_mode: str = "delta"  # "delta": targets minus current joint_pos; "absolute": the targets themselves
    # Instruction-conditioned patch embedding (FiLM, Perez et al. 2018, as RT-1 conditions its image tokenizer on the
    # instruction): hashed word uni-/bigrams of the instruction scale and shift every patch's features, so the
    # patches of the object named in the instruction stand out before the transformer sees them. 0 disables it.
    instruction_features: int = 0
    # LayerNorm on each patch embedding before the row/column encodings are added. Without it the trained patch
    # embeddings grow to 30-200x the norm of the text and value token embeddings (measured on the gato-arm
    # bundles), so the image positions' residual stream is nearly fixed by the pixels alone.
    patch_norm: bool = False
    # CoordConv (Liu et al. 2018): two channels with each pixel's image coordinates (in [-1, 1]) join the pixels
    # before the patch stem, so every patch's features say where in the image its content is; the learned row /
    # column encodings alone give the transformer only the patch's cell, and they must first be learned.
    patch_coords: bool = False
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(text_vocab_size=BYTE_TEXT_VOCAB))
    spec: TimestepSpec = field(default_factory=TimestepSpec)

    def __post_init__(self) -> None:
        if isinstance(self.tokenizer, Mapping):
            self.tokenizer = TokenizerConfig.from_dict(self.tokenizer)
        if isinstance(self.spec, Mapping):
            self.spec = TimestepSpec.from_dict(self.spec)
        for f in ("n_layers", "d_model", "n_heads", "d_ff", "window_steps", "patch_channels", "pos_bins"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"GatoConfig.{f}={getattr(self, f)}: must be a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(f"GatoConfig: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"GatoConfig: head_dim={self.head_dim} must be even for rotary positions")
        if self.window_steps < 2:
            raise ValueError(f"GatoConfig.window_steps={self.window_steps}: need >= 2 (a tick spans two timesteps)")
        if self.max_text_tokens < 2:
            raise ValueError(f"GatoConfig.max_text_tokens={self.max_text_tokens}: need room for BOS and EOS")
        if self.prompt_steps < 0:
            raise ValueError(f"GatoConfig.prompt_steps={self.prompt_steps}: must be >= 0")
        if self.instruction_features < 0:
            raise ValueError(f"GatoConfig.instruction_features={self.instruction_features}: must be >= 0 (0 = off)")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"GatoConfig.action_mode={self.action_mode!r}: choose one of {ACTION_MODES}")
        if self.patch_channels % self.patch_groups:
            raise ValueError(
                f"GatoConfig: patch_channels={self.patch_channels} must be divisible by patch_groups={self.patch_groups}"
            )
        p = self.tokenizer.patch_size
        if p % self.patch_stem_stride:
            raise ValueError(f"GatoConfig: patch_size={p} must be divisible by patch_stem_stride={self.patch_stem_stride}")
        if self.spec.text_tokens:
            raise ValueError("GatoConfig.spec.text_tokens must be 0: the instruction is a pinned prefix, not per step")
        if self.spec.image_shape is not None and self.spec.image_shape[2] not in (1, 3):
            raise ValueError(f"GatoConfig.spec.image_shape={self.spec.image_shape}: 1 or 3 channels expected")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        t = self.tokenizer
        return t.text_vocab_size + t.num_bins + 1

    @property
    def step_tokens(self) -> int:
        """Tokens per timestep S (38 for a 64x64 camera, 7+7 joint values and 7 actions)."""
        return self.observation_tokens + self.spec.action_size

    @property
    def observation_tokens(self) -> int:
        """Tokens before the actions in a timestep (image patches, continuous values, separator)."""
        n_img = 0
        if self.spec.image_shape is not None:
            h, w, _ = self.spec.image_shape
            n_img = (h // self.tokenizer.patch_size) * (w // self.tokenizer.patch_size)
        return n_img + sum(int(v) for v in self.spec.continuous.values()) + 1

    @property
    def patch_dim(self) -> int:
        c = self.spec.image_shape[2] if self.spec.image_shape is not None else 3
        return self.tokenizer.patch_size ** 2 * c

    @property
    def prefix_slots(self) -> int:
        """Size P of the pinned prefix: instruction + prompt timesteps."""
        return self.max_text_tokens + self.prompt_steps * self.step_tokens

    @property
    def ring_slots(self) -> int:
        """Size R of the timestep ring buffer: `window_steps` whole timesteps."""
        return self.window_steps * self.step_tokens

    @property
    def context_tokens(self) -> int:
        return self.prefix_slots + self.ring_slots

    def num_parameters(self) -> dict[str, int]:
        """Approximate parameter counts (embeddings vs. transformer blocks), for reports."""
        d, f = self.d_model, self.d_ff
        block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
        return {"embedding": self.vocab_size * d, "blocks": self.n_layers * block}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["tokenizer"] = dataclasses.asdict(self.tokenizer)
        out["spec"] = self.spec.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GatoConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"GatoConfig: unknown fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "GatoConfig":
        return dataclasses.replace(self, **changes)


# The arm models' size: a quarter of gato-small's block FLOPs so that ~3x more demonstrations fit into the 2-core CPU
# training budget (`make model`; the colour grounding needed more than that budget: see the model card).
_ARM = dict(n_layers=4, d_model=128, n_heads=4, d_ff=512, window_steps=4)

PRESETS: dict[str, GatoConfig] = {
    "gato-tiny": GatoConfig(
        name="gato-tiny", n_layers=2, d_model=64, n_heads=4, d_ff=128, window_steps=3, max_text_tokens=32,
        prompt_steps=1, patch_channels=8, patch_groups=4,
    ),
    "gato-small": GatoConfig(name="gato-small"),
    "gato-arm": GatoConfig(name="gato-arm", **_ARM),
    # Variants of gato-arm: instruction-conditioned patches, and additionally a normalised patch embedding with one
    # position embedding per patch row / column (pos_bins = the 4x4 grid: with Gato's 128 intervals each of the 32
    # embeddings per row is drawn in 1/32 of the samples), and CoordConv channels (the shipped bundle's preset).
    "gato-arm-film": GatoConfig(name="gato-arm-film", **_ARM, instruction_features=256),
    "gato-arm-film-norm": GatoConfig(name="gato-arm-film-norm", **_ARM, instruction_features=256, patch_norm=True,
                                     pos_bins=4),
    "gato-arm-film-coord": GatoConfig(name="gato-arm-film-coord", **_ARM, instruction_features=256, patch_norm=True,
                                      pos_bins=4, patch_coords=True),
    "gato-79m": GatoConfig(
        name="gato-79m", n_layers=8, d_model=768, n_heads=24, d_ff=3072, window_steps=16, max_text_tokens=64,
        prompt_steps=2, patch_channels=64, patch_groups=16, tokenizer=TokenizerConfig(),
    ),
}


def preset(name: str, **overrides: Any) -> GatoConfig:
    """A copy of preset `name` with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
