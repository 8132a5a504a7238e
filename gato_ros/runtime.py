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
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from gato_ros.bundle import Bundle, BundleError, graph_inputs, graph_outputs
from gato_ros.sequence import ContextBuilder, rope_full, rope_tables
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
        C, S, obs = P + R, self.ctx.S, self.ctx.obs_len
        self._C = C
        # Preallocated cache, all layers in one array each, bound per layer once (IO binding over the same memory).
        # Keys are stored transposed (Dh, slots) so scores need no transpose; values of prefix and ring share one
        # buffer (prefix slots first).
        self.prefix_k = np.zeros((L, H, Dh, P), np.float32)
        self.ring_k = np.zeros((L, H, Dh, R), np.float32)
        self.values = np.zeros((L, H, C, Dh), np.float32)
        self._prefix_mask = np.full(P, NEG_INF, np.float32)  # (P,) 0 where a prefix slot holds a token
        self._ring_step = np.full(R, -1, np.int64)  # (R,) timestep held by each ring slot, -1 = empty
        self._a_last = S - 1  # offset of the last action token in a timestep

        # Per-call inputs and outputs of the three fixed-shape calls of a tick, preallocated and bound once:
        # "tick0" (first tick: T = obs), "tick" (T = 1 + obs: the previous tick's last action + observation),
        # "decode" (T = 1). Only their contents change between calls.
        lp, rb, cb = self.ctx.local_pos, self.ctx.eval_row_bin, self.ctx.eval_col_bin
        self._io: dict[str, dict[str, np.ndarray]] = {}
        self._bind: dict[str, ort.IOBinding] = {}
        for name, offs in (("tick0", np.arange(obs)), ("tick", np.concatenate(([self._a_last], np.arange(obs))))):
            T = len(offs)
            mask = np.full((T, C + T), NEG_INF, np.float32)
            mask[:, C:] = np.triu(np.full((T, T), NEG_INF, np.float32), 1)
            self._io[name] = {
                "tokens": np.zeros(T, np.int64),
                "patches": np.zeros((T, cfg.patch_dim), np.float32),
                "is_image": self.ctx.is_image[offs].copy(),
                "local_pos": lp[offs].copy(),
                "row_bin": rb[offs].copy(),
                "col_bin": cb[offs].copy(),
                "prefix_pos": np.full(T, self.ctx.prefix_pad, np.int64),
                "rope_cos": np.zeros((T, Dh), np.float32),
                "rope_sin": np.zeros((T, Dh), np.float32),
                "mask": mask,
            }
        self._io["decode"] = {
            "tokens": np.zeros(1, np.int64),
            "rope_cos": np.zeros((1, Dh), np.float32),
            "rope_sin": np.zeros((1, Dh), np.float32),
            "mask": np.zeros((1, C + 1), np.float32),  # last column: the token itself
        }
        self._out: dict[str, dict[str, np.ndarray]] = {}
        for name, io in self._io.items():
            sess = self.sessions["decode" if name == "decode" else "prefill"]
            T = io["tokens"].shape[0]
            b = sess.io_binding()
            for k, arr in io.items():
                b.bind_cpu_input(k, arr)
            self._bind_cache(b)
            outs = {"logits": np.zeros((1, cfg.tokenizer.num_bins), np.float32),
                    "new_k": np.zeros((L, H, T, Dh), np.float32), "new_v": np.zeros((L, H, T, Dh), np.float32)}
            for k, arr in outs.items():
                b.bind_ortvalue_output(k, ort.OrtValue.ortvalue_from_numpy(arr))
            self._out[name] = outs
            self._bind[name] = b
        self._obs_slots = slice(0, obs)  # offsets of the observation tokens within a timestep
        self.instruction = ""
        self._prompt: TimestepTokens | None = None
        self.trace: list[np.ndarray] | None = None  # when a list, every sampled action's logits are appended
        self.timings: list[dict] | None = None  # when a list, `act` appends its phase times (s) (benchmark)
        self._calls: list[float] | None = None
        self.reset()

    def _bind_cache(self, b: ort.IOBinding) -> None:
        for l in range(self.cfg.n_layers):
            b.bind_cpu_input(f"prefix_k_{l}", self.prefix_k[l])
            b.bind_cpu_input(f"ring_k_{l}", self.ring_k[l])
            b.bind_cpu_input(f"value_{l}", self.values[l])

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
        timed = self.timings is not None
        t0 = time.perf_counter() if timed else 0.0
        obs = self._check_observation(observation)
        step = self.tok.tokenize_steps({k: v[None] for k, v in obs.items()}, None, self.cfg.spec)
        if timed:
            t1 = time.perf_counter()
            self._calls = [t1]
        tokens = self.act_tokens(step)
        t2 = time.perf_counter() if timed else 0.0
        norm = self.tok.decode_uniform(tokens)
        target = self.normalizer.denormalize(norm, obs["joint_pos"])
        out = np.clip(target, self.joint_limits[:, 0], self.joint_limits[:, 1])
        if timed:
            t3 = time.perf_counter()
            c = np.diff(self._calls)  # prefill, then each decode (incl. sampling the token it predicts)
            self.timings.append({"tokenize": t1 - t0, "prefill": float(c[0]), "decode": c[1:].tolist(),
                                 "detokenize": t3 - t2, "tick": t3 - t0})
            self._calls = None
        return out

    # ------------------------------------------------------------------ token level
    def act_tokens(self, step: TimestepTokens) -> np.ndarray:
        """Feed one timestep's observation tokens (actions unknown) and sample its A action tokens."""
        cfg, S, obs, K, P = self.cfg, self.ctx.S, self.ctx.obs_len, self.cfg.window_steps, self.cfg.prefix_slots
        t = self._t
        first = self._pending is None
        name = "tick0" if first else "tick"
        io, k = self._io[name], 0 if first else 1
        base = (t % K) * S  # ring slot of this timestep's first token

        # Rotary tables of this tick's positions: [last action of t-1], observation and action offsets of t.
        pos = t * S + np.arange(S)
        cos, sin = rope_full(*rope_tables(np.concatenate(([t * S - 1], pos)), cfg.head_dim, cfg.rope_base))
        # Ring visibility for queries of step t: slots holding steps in (t-K, t]; the previous tick's last action
        # (step t-1) also sees step t-K, whose slots this tick overwrites.
        rs = self._ring_step
        vis_t = np.where((rs >= 0) & (rs > t - K), 0.0, NEG_INF).astype(np.float32)
        mask = io["mask"]
        mask[:, :P] = self._prefix_mask
        mask[k:, P:self._C] = vis_t
        io["tokens"][k:] = step.tokens[0, :obs]
        io["patches"][k + self.ctx.image_slots] = step.patches[0]
        io["rope_cos"][k:], io["rope_sin"][k:] = cos[1:obs + 1], sin[1:obs + 1]
        if not first:
            mask[0, P:self._C] = np.where((rs >= 0) & (rs > t - 1 - K), 0.0, NEG_INF)
            io["tokens"][0] = self._pending
            io["rope_cos"][0], io["rope_sin"][0] = cos[0], sin[0]
        out = self._call(name)
        new_k, new_v = out["new_k"], out["new_v"]
        if not first:  # previous tick's last action -> its own timestep's slot
            a = ((t - 1) % K) * S + self._a_last
            self.ring_k[:, :, :, a] = new_k[:, :, 0]
            self.values[:, :, P + a] = new_v[:, :, 0]
            rs[a] = t - 1
        self.ring_k[:, :, :, base:base + obs] = new_k[:, :, k:].transpose(0, 1, 3, 2)
        self.values[:, :, P + base:P + base + obs] = new_v[:, :, k:]
        rs[base:base + obs] = t
        calls = self._calls
        if calls is not None:
            calls.append(time.perf_counter())

        # Decodes: every cached slot visible to step t, plus the token itself.
        dec = self._io["decode"]
        dmask = dec["mask"]
        dmask[0, :P] = self._prefix_mask
        dmask[0, P:self._C] = vis_t
        dmask[0, P + base:P + base + obs] = 0.0
        if not first:
            dmask[0, P + a] = 0.0
        dout = self._out["decode"]
        logits = out["logits"]
        A = cfg.spec.action_size
        acts = np.empty(A, np.int64)
        for j in range(A):
            acts[j] = self._sample(logits)
            if j + 1 == A:
                break
            slot = base + obs + j
            dec["tokens"][0] = acts[j]
            dec["rope_cos"][0], dec["rope_sin"][0] = cos[1 + obs + j], sin[1 + obs + j]
            self._call("decode")
            self.ring_k[:, :, :, slot] = dout["new_k"][:, :, 0]
            self.values[:, :, P + slot] = dout["new_v"][:, :, 0]
            rs[slot] = t
            dmask[0, P + slot] = 0.0
            logits = dout["logits"]
            if calls is not None:
                calls.append(time.perf_counter())
        self._pending = int(acts[-1])
        self._t = t + 1
        return acts

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

    def _call(self, name: str) -> dict[str, np.ndarray]:
        """Run a pre-bound call; its outputs land in the preallocated arrays returned."""
        self.sessions["decode" if name == "decode" else "prefill"].run_with_iobinding(self._bind[name])
        return self._out[name]

    def _encode_prefix(self) -> None:
        """Encode the instruction (and prompt) into the prefix buffers: one prefill call, no rotary positions."""
        cfg = self.cfg
        empty = self.tok.tokenize_steps(
            {k: np.zeros((0, *s), np.uint8 if k == "image" else np.float64) for k, s in self._obs_shapes().items()},
            np.zeros((0, cfg.spec.action_size)), cfg.spec)
        ctx = self.ctx.build(self.ctx.text_ids(self.instruction), empty, 0, self._prompt, n_steps=0)
        n = int(ctx["valid"].sum())  # prefix tokens are contiguous from slot 0
        self._prefix_mask.fill(NEG_INF)
        self.prefix_k.fill(0.0)
        self.values[:, :, :cfg.prefix_slots].fill(0.0)
        feeds = {name: np.ascontiguousarray(ctx[name][:n]) for name in
                 ("tokens", "patches", "is_image", "local_pos", "row_bin", "col_bin", "prefix_pos")}
        feeds["rope_cos"], feeds["rope_sin"] = rope_full(ctx["rope_cos"][:n], ctx["rope_sin"][:n])
        mask = np.full((n, self._C + n), NEG_INF, np.float32)  # nothing cached yet: causal among the prefix
        mask[:, self._C:] = np.triu(np.full((n, n), NEG_INF, np.float32), 1)
        feeds["mask"] = mask
        b = self.sessions["prefill"].io_binding()
        for k, arr in feeds.items():
            b.bind_cpu_input(k, arr)
        self._bind_cache(b)
        for k in ("logits", "new_k", "new_v"):
            b.bind_output(k, "cpu")
        self.sessions["prefill"].run_with_iobinding(b)
        _, new_k, new_v = b.copy_outputs_to_cpu()
        self.prefix_k[:, :, :, :n] = new_k.transpose(0, 1, 3, 2)
        self.values[:, :, :n] = new_v
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
