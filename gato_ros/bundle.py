"""Model bundle: `models/<name>/` = ONNX graphs + `gato.json` (numpy / json only; the runtime loads it).

Files:

| file           | content                                                                                  |
|----------------|------------------------------------------------------------------------------------------|
| `gato.json`    | everything the runtime needs (below) + provenance and evaluation results                 |
| `prefill.onnx` | T new tokens (any kind) against the KV cache -> action logits of the last token, new K/V |
| `decode.onnx`  | T action tokens (no image/position inputs) against the KV cache -> logits, new K/V       |
| `model.pt`     | torch weights + config, only for fine-tuning (`gato-ros train --init BUNDLE`)             |
| `README.md`    | model card                                                                               |

`gato.json` keys: `format`, `name`, `model` (GatoConfig incl. `tokenizer` and timestep `spec`), `tokenizer`,
`text_tokenizer`, `image_size`, `observation_layout`, `joint_names`, `joint_limits`, `control_rate_hz`,
`action` (normaliser + encoding), `context` (window, prefix and ring sizes), `graphs` (file, sha256, inputs,
outputs), `provenance`, `export_check`, `eval`.

Graph interface (H heads, Dh head dim, P prefix slots, R ring slots, L layers; see `gato_ros.model.model`):
inputs `tokens` (T,) int64, `patches` (N, p*p*C) f32 (the N image positions among the T, at least one row),
`patch_row_bin`, `patch_col_bin` (N,) int64, `embed_index` (T,) int64 (the row of [token embeddings; patch
embeddings] each position takes; `gato_ros.sequence.ContextBuilder.embed_inputs`), `local_pos`, `prefix_pos` (T,)
int64, only when `model.instruction_features` > 0 `text_feat` (F,) f32
(`gato_ros.sequence.instruction_features`, for the instruction-conditioned patch embedding), `rope_cos`,
`rope_sin` (T, Dh) f32 (full-width, `gato_ros.sequence.rope_full`), `mask` (T, P+R+T) f32 additive over [prefix
slots, ring slots, new tokens], and per layer l `prefix_k_l` (H, Dh, P) unrotated, `ring_k_l` (H, Dh, R) rotated,
`value_l` (H, P+R, Dh); outputs `logits` (min(T, A), num_bins) of the last A = action_size tokens, `new_k`, `new_v`
(L, H, T, Dh). `decode.onnx` takes action `tokens` (T,), the rope tables, the mask
and the cache (T action tokens: one per call in sequential decoding, several in Jacobi iterations).

`gato.json`'s `precision` (absent: fp32) says how the graphs compute: `fp32`; `int8` (int8 weight matmuls, the
interface above unchanged); `fp16` (every weight and activation half precision, and every "f32" input and output
above is float16 instead, the KV cache included: half the cache memory and traffic, for GPUs).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from gato_ros.model.config import GatoConfig
from gato_ros.sequence import ActionNormalizer

FORMAT = "gato_ros.bundle/2"
# Format 1 graphs took dense patches (one row per new token, the patch branch run on every position); format 2
# takes the image positions' patches only. Same weights: a format-1 bundle is re-exported from its model.pt.
OLD_FORMATS = {"gato_ros.bundle/1": "its graphs take dense patches"}
CONFIG_FILE = "gato.json"
GRAPHS = ("prefill", "decode")

OUTPUTS = ("logits", "new_k", "new_v")
PRECISIONS = ("fp32", "int8", "fp16")


def float_type(precision: str) -> str:
    """numpy name of a graph's float inputs and outputs (cache included) for a bundle `precision`."""
    if precision not in PRECISIONS:
        raise BundleError(f"unknown precision {precision!r} (this version reads {', '.join(PRECISIONS)})")
    return "float16" if precision == "fp16" else "float32"


def cache_names(n_layers: int) -> list[str]:
    return [f"{n}_{l}" for l in range(n_layers) for n in ("prefix_k", "ring_k", "value")]


def graph_inputs(cfg: GatoConfig, graph: str, precision: str = "fp32") -> list[tuple[str, str, tuple]]:
    """(name, dtype, shape) of every input of `graph` in a bundle of `precision`; "T" marks the dynamic axis of the
    new tokens (the mask's second axis is P + R + T), "N" that of their image patches."""
    H, Dh, P, R = cfg.n_heads, cfg.head_dim, cfg.prefix_slots, cfg.ring_slots
    T, f = "T", float_type(precision)
    out: list[tuple[str, str, tuple]] = []
    if graph == "prefill":
        out += [("tokens", "int64", (T,)), ("patches", f, ("N", cfg.patch_dim)),
                ("patch_row_bin", "int64", ("N",)), ("patch_col_bin", "int64", ("N",)), ("embed_index", "int64", (T,)),
                ("local_pos", "int64", (T,)), ("prefix_pos", "int64", (T,))]
        if cfg.instruction_features:
            out += [("text_feat", f, (cfg.instruction_features,))]
    else:
        out += [("tokens", "int64", (T,))]
    out += [("rope_cos", f, (T, Dh)), ("rope_sin", f, (T, Dh)), ("mask", f, (T, "T"))]
    for l in range(cfg.n_layers):
        out += [(f"prefix_k_{l}", f, (H, Dh, P)), (f"ring_k_{l}", f, (H, Dh, R)), (f"value_{l}", f, (H, P + R, Dh))]
    return out


def graph_outputs(cfg: GatoConfig, graph: str, precision: str = "fp32") -> list[tuple[str, str, tuple]]:
    f = float_type(precision)
    kv = (cfg.n_layers, cfg.n_heads, "T", cfg.head_dim)
    rows = "T"  # min(T, action_size): the last tokens' action logits
    return [("logits", f, (rows, cfg.tokenizer.num_bins)), ("new_k", f, kv), ("new_v", f, kv)]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleError(ValueError):
    """A bundle that cannot be used: the message names the file and what is wrong."""


class Bundle:
    """A parsed, checked bundle directory (graph files exist and match their recorded hashes)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.meta = meta
        cfg_file = path / CONFIG_FILE
        try:
            self.config = GatoConfig.from_dict(meta["model"])
            self.normalizer = ActionNormalizer.from_dict(meta["action"]["normalization"])
            self.joint_names = [str(n) for n in meta["joint_names"]]
            self.joint_limits = np.asarray(meta["joint_limits"], dtype=np.float64)
            self.control_rate_hz = float(meta["control_rate_hz"])
            size = meta.get("image_size")
            # An int for square images (the sim's and the datasets' convention), else (H, W).
            hw = tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else (int(size), int(size)) if size \
                else None
            self.image_size = (hw[0] if hw[0] == hw[1] else hw) if hw else None
            graphs = meta["graphs"]
            self.precision = str(meta.get("precision", "fp32"))
            self.float_dtype = np.dtype(float_type(self.precision))  # the graphs' float inputs/outputs
        except BundleError as e:
            raise BundleError(f"{cfg_file}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{cfg_file}: invalid or incomplete ({type(e).__name__}: {e})") from None
        A = self.config.spec.action_size
        if len(self.joint_names) != A or self.joint_limits.shape != (A, 2):
            raise BundleError(f"{cfg_file}: {len(self.joint_names)} joint_names and joint_limits of shape "
                              f"{self.joint_limits.shape}, but the model acts on {A} joints")
        if self.normalizer.low.shape != (A,):
            raise BundleError(f"{cfg_file}: action normalisation has {self.normalizer.low.shape[0]} joints, "
                              f"the model acts on {A}")
        self.graph_files: dict[str, Path] = {}
        for g in GRAPHS:
            if g not in graphs:
                raise BundleError(f"{cfg_file}: no graphs.{g} entry")
            f = path / graphs[g]["file"]
            if not f.is_file():
                raise BundleError(f"{f}: missing (bundle {path} lists it as the {g} graph)")
            want = graphs[g].get("sha256")
            if want and sha256(f) != want:
                raise BundleError(f"{f}: corrupt (sha256 differs from {CONFIG_FILE}); re-export the bundle")
            self.graph_files[g] = f

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        p = Path(path)
        if not p.is_dir():
            raise BundleError(f"{p}: not a bundle directory (expected models/<name>/ with {CONFIG_FILE})")
        f = p / CONFIG_FILE
        if not f.is_file():
            raise BundleError(f"{f}: missing; is {p} a gato_ros bundle?")
        try:
            meta = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"{f}: not valid JSON ({e})") from None
        fmt = meta.get("format")
        if fmt in OLD_FORMATS and (p / "model.pt").is_file():
            raise BundleError(f"{f}: format {fmt!r} ({OLD_FORMATS[fmt]}), this runtime reads {FORMAT!r}; re-export "
                              f"its graphs from its weights, keeping its records: gato-ros export --upgrade {p}")
        if fmt != FORMAT:
            raise BundleError(f"{f}: format {fmt!r}, this runtime reads {FORMAT!r}")
        return cls(p, meta)


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


def bundle_meta(cfg: GatoConfig, normalizer: ActionNormalizer, robot: dict[str, Any], name: str,
                provenance: dict[str, Any]) -> dict[str, Any]:
    """The `gato.json` content for a model (graph entries and checks are added by export)."""
    spec = cfg.spec
    return {
        "format": FORMAT,
        "name": name,
        "model": cfg.to_dict(),
        "tokenizer": cfg.to_dict()["tokenizer"],
        "text_tokenizer": cfg.tokenizer.text_tokenizer,
        "image_size": list(spec.image_shape[:2]) if spec.image_shape is not None else None,
        "observation_layout": {
            "image": list(spec.image_shape) if spec.image_shape is not None else None,
            "continuous": {k: int(spec.continuous[k]) for k in spec.continuous_keys},
            "order": ["image", *spec.continuous_keys, "separator", "action"],
            "tokens_per_step": cfg.step_tokens,
            "observation_tokens": cfg.observation_tokens,
            "image_encoding": "rgb8" if spec.image_shape is None or spec.image_shape[2] == 3 else "mono8",
        },
        "joint_names": list(robot["joint_names"]),
        "joint_limits": [list(map(float, r)) for r in robot["joint_limits"]],
        "control_rate_hz": float(robot.get("control_rate_hz", 20.0)),
        "action": {
            "normalization": normalizer.to_dict(),
            "encoding": "uniform",
            "num_bins": cfg.tokenizer.num_bins,
            "size": spec.action_size,
        },
        "context": {
            "window_steps": cfg.window_steps,
            "max_text_tokens": cfg.max_text_tokens,
            "prompt_steps": cfg.prompt_steps,
            "prefix_slots": cfg.prefix_slots,
            "ring_slots": cfg.ring_slots,
            "context_tokens": cfg.context_tokens,
        },
        "graphs": {},
        "provenance": provenance,
        "export_check": {},
        "eval": {},
    }
