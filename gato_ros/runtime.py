"""Runtime policy: a bundle's ONNX graphs under ONNX Runtime with a preallocated KV cache (numpy + onnxruntime).

One control tick (`act`), for timestep t with S tokens per step (38 by default):

```
observation -> tokenizer -> prefill [a7(t-1), 16 patches, 14 joint values, separator]  (32 tokens, 1 call)
            -> logits -> a1 -> decode a1 -> a2 -> ... -> decode a6 -> a7                (6 calls)
            -> 7 action bins -> [-1, 1] -> joint targets (normaliser; + joint_pos in delta mode) -> clip to limits
```
The last action token of a tick is fed in with the next tick's prefill (its keys and values are only needed by
later tokens), so a tick is 7 graph calls for 38 tokens.

KV cache (`gato_ros.sequence` explains why this equals the trained model): per layer, a prefix buffer of P slots
(instruction + optional Gato prompt, written once per episode by `set_instruction` / `set_prompt`) and a ring
of R = window_steps * S slots; timestep t lives in ring slots [(t mod window) * S, ... + S). The graphs read the
buffers whole, masked per query (prefix validity; ring slots whose step is inside the query's window), and
return only the new tokens' keys/values, which are written into the numpy buffers here. The buffers are bound to
ONNX Runtime once (IO binding over the same memory), so nothing proportional to the context is copied per call.

Imports neither torch nor rclpy (tested).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from gato_ros.bundle import Bundle, BundleError, graph_inputs, graph_outputs
from gato_ros.sequence import ContextBuilder, rope_tables
from gato_ros.tokenizer import GatoTokenizer, TimestepTokens

PROVIDER_ORDER = {
    "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}
NEG_INF = np.float32(-np.inf)
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def _gpu_present() -> bool:
    """onnxruntime-gpu lists CUDA providers even without a GPU; look for a device before trying them."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def choose_providers(execution_provider: str) -> list[str]:
    if execution_provider not in PROVIDER_ORDER:
        raise ValueError(f"execution_provider={execution_provider!r}: choose one of {sorted(PROVIDER_ORDER)}")
    available = set(ort.get_available_providers())
    want = PROVIDER_ORDER[execution_provider]
    if execution_provider == "auto" and not _gpu_present():
        want = ["CPUExecutionProvider"]
    return [p for p in want if p in available] or ["CPUExecutionProvider"]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else min(os.cpu_count() or 1, 4)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def _check_graph(sess: ort.InferenceSession, path: Path, cfg, graph: str) -> None:
    """Raise BundleError naming `path` when the graph's inputs/outputs disagree with gato.json's config."""
    def dims(shape) -> tuple:
        return tuple(d if isinstance(d, int) else "T" for d in shape)

    got = {i.name: (_ORT_TYPES.get(i.type, i.type), dims(i.shape)) for i in sess.get_inputs()}
    for name, dtype, shape in graph_inputs(cfg, graph):
        if name not in got:
            raise BundleError(f"{path}: graph has no input {name!r} that gato.json's model config implies "
                              f"(graph inputs: {sorted(got)})")
        if got[name] != (dtype, tuple(shape)):
            raise BundleError(f"{path}: input {name!r} is {got[name][0]} {got[name][1]}, gato.json's model config "
                              f"implies {dtype} {tuple(shape)}")
    outs = {o.name: dims(o.shape) for o in sess.get_outputs()}
    for name, _, shape in graph_outputs(cfg, graph):
        if name not in outs:
            raise BundleError(f"{path}: graph has no output {name!r}")
        if name == "logits" and outs[name] != tuple(shape):
            raise BundleError(f"{path}: output 'logits' is {outs[name]}, gato.json implies {tuple(shape)}")


class RuntimePolicy:
    """Policy protocol (`reset`, `set_instruction`, `act`) over a bundle, with a KV cache kept across ticks."""

    def __init__(self, bundle: Bundle, execution_provider: str = "auto", temperature: float = 0.0,
                 seed: int = 0, threads: int | None = None):
        self.bundle = bundle
        cfg = self.cfg = bundle.config
        self.joint_names = list(bundle.joint_names)
        self.joint_limits = bundle.joint_limits.copy()
        self.image_size = bundle.image_size
        self.control_rate_hz = bundle.control_rate_hz
        self.normalizer = bundle.normalizer
        self.temperature = float(temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
        self._rng = np.random.default_rng(seed)
        self.tok = GatoTokenizer(cfg.tokenizer)
        self.ctx = ContextBuilder(cfg, self.tok)

        providers = choose_providers(execution_provider)
        so = session_options(threads)
        self.sessions: dict[str, ort.InferenceSession] = {}
        for g, f in bundle.graph_files.items():
            try:
                sess = ort.InferenceSession(str(f), sess_options=so, providers=providers)
            except Exception as e:  # onnxruntime raises several types for unreadable graphs
                raise BundleError(f"{f}: cannot be loaded by ONNX Runtime ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}); re-export the bundle") from None
            _check_graph(sess, f, cfg, g)
            self.sessions[g] = sess
        self.provider = self.sessions["prefill"].get_providers()[0]

        L, H, Dh, P, R = cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.prefix_slots, cfg.ring_slots
        # Preallocated cache, bound once; keys stored transposed (H, Dh, slots) so scores need no transpose.
        self.cache: dict[str, np.ndarray] = {}
        for l in range(L):
            self.cache[f"prefix_k_{l}"] = np.zeros((H, Dh, P), np.float32)
            self.cache[f"prefix_v_{l}"] = np.zeros((H, P, Dh), np.float32)
            self.cache[f"ring_k_{l}"] = np.zeros((H, Dh, R), np.float32)
            self.cache[f"ring_v_{l}"] = np.zeros((H, R, Dh), np.float32)
        self._prefix_mask = np.full(P, NEG_INF, np.float32)  # (P,) 0 where a prefix slot holds a token
        self._ring_step = np.full(R, -1, np.int64)  # (R,) timestep held by each ring slot, -1 = empty
        self._bindings = {g: s.io_binding() for g, s in self.sessions.items()}
        for g, b in self._bindings.items():
            for name, arr in self.cache.items():
                b.bind_cpu_input(name, arr)

        S, obs = self.ctx.S, self.ctx.obs_len
        self._a_last = S - 1  # offset of the last action token in a timestep
        # Constant per-position inputs of a tick's prefill: [last action of t-1] + observation tokens of t.
        lp, rb, cb = self.ctx.local_pos, self.ctx.eval_row_bin, self.ctx.eval_col_bin
        self._tick_offsets = {
            0: np.arange(obs),  # first tick of an episode: no previous action
            1: np.concatenate(([self._a_last], np.arange(obs))),
        }
        self._tick_const = {}
        for k, offs in self._tick_offsets.items():
            self._tick_const[k] = {
                "is_image": self.ctx.is_image[offs].copy(),
                "local_pos": lp[offs].copy(),
                "row_bin": rb[offs].copy(),
                "col_bin": cb[offs].copy(),
                "prefix_pos": np.full(len(offs), self.ctx.prefix_pad, np.int64),
                "mask_new": np.triu(np.full((len(offs), len(offs)), NEG_INF, np.float32), 1),
            }
        self._decode_mask_new = np.zeros((1, 1), np.float32)
        self.instruction = ""
        self._prompt: TimestepTokens | None = None
        self.trace: list[np.ndarray] | None = None  # when a list, every sampled action's logits are appended
        self.reset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, execution_provider: str = "auto", temperature: float = 0.0,
             seed: int = 0, threads: int | None = None, prompt: Mapping | None = None) -> "RuntimePolicy":
        """Load a bundle directory. `prompt`: optional Gato prompt episode {"observations": {...}, "actions":
        (T, A)} whose last `prompt_steps` timesteps are pinned after the instruction (few-shot prompting)."""
        policy = cls(Bundle.load(bundle_dir), execution_provider, temperature, seed, threads)
        if prompt is not None:
            policy.set_prompt(prompt["observations"], prompt["actions"])
        return policy

    # ------------------------------------------------------------------ Policy protocol
    def reset(self) -> None:
        """Start a new episode: clear the timestep ring, keep (re-encode) the instruction and prompt prefix."""
        self._t = 0
        self._pending: int | None = None  # last action token of the previous tick, not yet in the cache
        self._ring_step.fill(-1)
        self._encode_prefix()

    def set_instruction(self, text: str) -> None:
        """Set the instruction and start a new episode context (the prefix is encoded once, here)."""
        if not isinstance(text, str):
            raise ValueError(f"instruction: expected str, got {type(text).__name__}")
        self.instruction = text
        self.reset()

    def set_prompt(self, observations: Mapping[str, np.ndarray] | None, actions: np.ndarray | None = None) -> None:
        """Gato prompting: pin the last `prompt_steps` timesteps of a demonstration after the instruction
        (None clears it). Starts a new episode context."""
        if observations is None:
            self._prompt = None
        else:
            k = self.cfg.prompt_steps
            if k == 0:
                raise ValueError(f"this bundle's model ({self.cfg.name}) was built without prompt slots")
            obs = {key: np.asarray(observations[key])[-k:] for key in self._obs_keys()}
            act = self.normalizer.normalize(np.asarray(actions)[-k:], obs["joint_pos"])
            self._prompt = self.tok.tokenize_steps(obs, act, self.cfg.spec)
        self.reset()

    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """One control tick: observation dict -> (A,) float64 joint targets (clipped to the joint limits)."""
        obs = self._check_observation(observation)
        step = self.tok.tokenize_steps({k: v[None] for k, v in obs.items()}, None, self.cfg.spec)
        tokens = self.act_tokens(step)
        norm = self.tok.decode_uniform(tokens)
        target = self.normalizer.denormalize(norm, obs["joint_pos"])
        return np.clip(target, self.joint_limits[:, 0], self.joint_limits[:, 1])

    # ------------------------------------------------------------------ token level
    def act_tokens(self, step: TimestepTokens) -> np.ndarray:
        """Feed one timestep's observation tokens (actions unknown) and sample its A action tokens."""
        cfg, S, obs_len = self.cfg, self.ctx.S, self.ctx.obs_len
        t = self._t
        first = self._pending is None
        k = 0 if first else 1
        offs = self._tick_offsets[k]
        steps = np.full(len(offs), t, np.int64)
        tokens = np.empty(len(offs), np.int64)
        tokens[k:] = step.tokens[0, :obs_len]
        patches = np.zeros((len(offs), cfg.patch_dim), np.float32)
        patches[k + self.ctx.image_slots] = step.patches[0]
        if not first:
            steps[0] = t - 1
            tokens[0] = self._pending
        feeds = dict(self._tick_const[k], tokens=tokens, patches=patches)
        logits = self._run("prefill", feeds, steps, offs)
        out = np.empty(cfg.spec.action_size, np.int64)
        for j in range(cfg.spec.action_size):
            out[j] = self._sample(logits)
            if j + 1 < cfg.spec.action_size:
                logits = self._run("decode", {"tokens": out[j:j + 1]}, np.array([t]), np.array([obs_len + j]))
        self._pending = int(out[-1])
        self._t = t + 1
        return out

    def _sample(self, logits: np.ndarray) -> int:
        """Greedy by default; with a temperature, a draw from softmax(logits / temperature)."""
        z = logits.reshape(-1)
        if self.trace is not None:
            self.trace.append(z.copy())
        if self.temperature == 0.0:
            return int(np.argmax(z)) + self.tok.bin_offset
        z = (z - z.max()) / self.temperature
        p = np.exp(z)
        return int(self._rng.choice(z.size, p=p / p.sum())) + self.tok.bin_offset

    def _run(self, graph: str, feeds: dict[str, np.ndarray], steps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Run an episode-token call: tokens at (steps, offsets); write their K/V into the ring; return logits."""
        cfg, S, K = self.cfg, self.ctx.S, self.cfg.window_steps
        pos = steps * S + offsets
        cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_base)
        # A ring slot is visible to a query of step s iff it holds a step in (s - K, s]; all cached tokens precede.
        rs = self._ring_step
        mask_ring = np.where((rs[None, :] >= 0) & (steps[:, None] - rs[None, :] < K), 0.0, NEG_INF)
        T = len(pos)
        feeds.update(rope_cos=cos, rope_sin=sin, mask_prefix=np.broadcast_to(self._prefix_mask, (T, cfg.prefix_slots)),
                     mask_ring=mask_ring.astype(np.float32))
        if graph == "decode":
            feeds["mask_new"] = self._decode_mask_new
        logits, new_k, new_v = self._call(graph, feeds)
        slots = (steps % K) * S + offsets
        for l in range(cfg.n_layers):
            self.cache[f"ring_k_{l}"][:, :, slots] = new_k[l].transpose(0, 2, 1)  # (H, Dh, T)
            self.cache[f"ring_v_{l}"][:, slots, :] = new_v[l]  # (H, T, Dh)
        self._ring_step[slots] = steps
        return logits

    def _call(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        b = self._bindings[graph]
        for name, arr in feeds.items():
            b.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in ("logits", "new_k", "new_v"):  # unallocated: ORT sizes them per call (T varies)
            b.bind_output(name, "cpu")
        self.sessions[graph].run_with_iobinding(b)
        return b.copy_outputs_to_cpu()

    def _encode_prefix(self) -> None:
        """Encode the instruction (and prompt) into the prefix buffers: one prefill call, no rotary positions."""
        cfg = self.cfg
        ctx = self.ctx.build(self.ctx.text_ids(self.instruction), self.tok.tokenize_steps(
            {k: np.zeros((0, *s), np.uint8 if k == "image" else np.float64) for k, s in self._obs_shapes().items()},
            np.zeros((0, cfg.spec.action_size)), cfg.spec), 0, self._prompt, n_steps=0)
        n = int(ctx["valid"].sum())  # prefix tokens are contiguous from slot 0
        self._prefix_mask.fill(NEG_INF)
        for l in range(cfg.n_layers):
            self.cache[f"prefix_k_{l}"].fill(0.0)
            self.cache[f"prefix_v_{l}"].fill(0.0)
        feeds = {name: ctx[name][:n] for name in ("tokens", "patches", "is_image", "local_pos", "row_bin", "col_bin",
                                                  "prefix_pos", "rope_cos", "rope_sin")}
        feeds["mask_prefix"] = np.full((n, cfg.prefix_slots), NEG_INF, np.float32)
        feeds["mask_ring"] = np.full((n, cfg.ring_slots), NEG_INF, np.float32)
        feeds["mask_new"] = np.triu(np.full((n, n), NEG_INF, np.float32), 1)
        _, new_k, new_v = self._call("prefill", feeds)
        for l in range(cfg.n_layers):
            self.cache[f"prefix_k_{l}"][:, :, :n] = new_k[l].transpose(0, 2, 1)
            self.cache[f"prefix_v_{l}"][:, :n, :] = new_v[l]
        self._prefix_mask[:n] = 0.0

    # ------------------------------------------------------------------ observations
    def _obs_keys(self) -> tuple[str, ...]:
        spec = self.cfg.spec
        return (("image",) if spec.image_shape is not None else ()) + spec.continuous_keys

    def _obs_shapes(self) -> dict[str, tuple]:
        spec = self.cfg.spec
        out: dict[str, tuple] = {}
        if spec.image_shape is not None:
            out["image"] = tuple(spec.image_shape)
        for k in spec.continuous_keys:
            out[k] = (int(spec.continuous[k]),)
        return out

    def _check_observation(self, observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key, shape in self._obs_shapes().items():
            if key not in observation:
                raise ValueError(f"observation: missing {key!r}; the model expects keys {sorted(self._obs_shapes())}")
            v = np.asarray(observation[key])
            if v.shape != shape:
                hint = " (resize camera frames to the bundle's image_size)" if key == "image" else ""
                raise ValueError(f"observation[{key!r}]: shape {v.shape}, the model expects {shape}{hint}")
            if key == "image" and v.dtype != np.uint8:
                raise ValueError(f"observation['image']: dtype {v.dtype}, expected uint8 RGB")
            out[key] = v
        return out
