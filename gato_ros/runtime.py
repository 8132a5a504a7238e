"""Runtime policy: a bundle's ONNX graphs under ONNX Runtime with a preallocated KV cache (numpy + onnxruntime).

One control tick (`act`), for timestep t with S tokens per step (38 by default):

```
observation -> tokenizer -> call 1: [a7(t-1), 16 patches, 14 joint values, separator, guesses g1..g6]
            -> logits at separator, g1..g6 -> a1 is certain; a(j+1) is certain while gj == aj
            -> further calls [last certain token, new guesses] until all 7 are certain (exact greedy, see act_tokens)
            -> 7 action bins -> [-1, 1] -> joint targets (normaliser; + joint_pos in delta mode) -> clip to limits
```
The guesses are the previous tick's actions: a smoothly moving arm needs one pass over the weights per tick
(at most 7, as with one call per action token; `jacobi = False` or a temperature gives exactly that). The last
action token of a tick is fed in with the next tick's first call (only later tokens need its keys and values).

KV cache (`gato_ros.sequence` explains why this equals the trained model): per layer, a prefix buffer of P slots
(instruction + optional Gato prompt, written once per episode by `set_instruction` / `set_prompt`) and a ring
of R = window_steps * S slots; timestep t lives in ring slots [(t mod window) * S, ... + S). The graphs read the
buffers whole, masked per query (prefix validity; ring slots whose step is inside the query's window), and
return only the new tokens' keys/values; those of proven tokens are written into the numpy buffers here. The
buffers, and each call shape's inputs and outputs, are bound to ONNX Runtime once (IO binding over the same
memory), so nothing proportional to the context is copied per call. On a GPU (CUDA or TensorRT provider) with CuPy
installed, the cache buffers and the new keys/values live in GPU memory (`kv_device`), bound once by device address
and written on the device; without CuPy they stay in host memory, and every call copies the cache to the GPU.

Imports neither torch nor rclpy (tested).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import time
import warnings
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
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # sessions whose cache can live on the GPU
NEG_INF = np.float32(-np.inf)
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}


def _libm():
    """glibc's libm on x86-64 Linux (for fegetenv/fesetenv), else None."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:
        return None


_LIBM = _libm()
_FENV_BYTES, _MXCSR_AT = 32, 28  # glibc's x86-64 fenv_t: the x87 environment (28 bytes), then the SSE MXCSR
_FTZ_DAZ = 0x8040  # MXCSR flush-to-zero (results) and denormals-are-zero (inputs)


class _FloatEnv:
    """Scope over the calling thread's floating-point environment (x86-64 Linux; elsewhere a no-op): restored on
    exit as it was on entry; with `flush`, denormal floats are flushed to zero inside (MXCSR FTZ + DAZ).

    Why: see `session_options`. ONNX Runtime's own `session.set_denormal_as_zero` also sets these flags, on each
    session's pool threads and, for the first session of a process, on the thread creating it for good, so the
    host process's numpy, MuJoCo or hypothesis would lose denormals too. Sessions are therefore created inside
    `_FloatEnv()` (`inference_session`), and the policy's own graph calls run inside `_FloatEnv(flush=True)`."""

    __slots__ = ("flush", "saved")

    def __init__(self, flush: bool = False):
        self.flush = flush
        self.saved = None

    def __enter__(self) -> "_FloatEnv":
        if _LIBM is None:
            return self
        saved = ctypes.create_string_buffer(_FENV_BYTES)
        if _LIBM.fegetenv(saved) != 0:
            return self
        self.saved = saved
        if self.flush:
            env = ctypes.create_string_buffer(saved.raw, _FENV_BYTES)
            mxcsr = int.from_bytes(saved.raw[_MXCSR_AT:_MXCSR_AT + 4], "little") | _FTZ_DAZ
            ctypes.memmove(ctypes.addressof(env) + _MXCSR_AT, mxcsr.to_bytes(4, "little"), 4)
            _LIBM.fesetenv(env)
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            _LIBM.fesetenv(self.saved)


def inference_session(path: str | os.PathLike, sess_options: ort.SessionOptions,
                      providers: list[str]) -> ort.InferenceSession:
    """`ort.InferenceSession` that leaves the calling thread's floating-point environment as it found it."""
    with _FloatEnv():
        return ort.InferenceSession(str(path), sess_options=sess_options, providers=providers)


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


def _kv_device(kv_device: str, provider: str) -> str:
    """Where the KV cache lives: "cpu", or "cuda" (GPU memory; needs a CUDA/TensorRT session and CuPy).
    "auto": on the GPU when both are there, else in host memory."""
    if kv_device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"kv_device={kv_device!r}: choose auto, cpu or cuda")
    on_gpu = provider in GPU_PROVIDERS
    if kv_device == "cpu" or (kv_device == "auto" and not on_gpu):
        return "cpu"
    if not on_gpu:
        raise ValueError(f"kv_device='cuda' needs the CUDA or TensorRT provider; the session runs on {provider}")
    try:
        import cupy  # noqa: F401, PLC0415
    except ImportError:
        if kv_device == "cuda":
            raise ValueError("kv_device='cuda' needs CuPy (pip install cupy-cuda12x or cupy-cuda13x)") from None
        warnings.warn("the model runs on the GPU but CuPy is not installed: the KV cache stays in host memory and "
                      "is copied to the GPU on every call (pip install cupy-cuda12x / cupy-cuda13x)", RuntimeWarning,
                      stacklevel=3)
        return "cpu"
    return "cuda"


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for every session of a policy: `threads` intra-op threads (None: min(cores, 4)).

    With more than one thread, the pool's workers stop spinning when a call returns. A tick alternates two sessions
    (prefill, decode) with Python in between, each session has its own pool, and by default a pool's workers keep
    spinning for a while after a call: on a 2-core machine the idle session's spinning worker then takes the core
    the other session's call needs (gato-79m int8, 2 threads: decode call 7.7 ms spinning against 4.7 ms stopped,
    1 thread 6.5 ms; BENCHMARKS.md, 2026-11-30 15:15 section). Workers still spin between the operators of a call.

    Denormal floats are flushed to zero in the graph calls: on the pool threads by `session.set_denormal_as_zero`,
    on the calling thread by `_FloatEnv(flush=True)` around the policy's calls, and only there (create sessions
    with `inference_session`, which undoes what ONNX Runtime would leave set on the creating thread). Attention
    masks add -inf, and the softmax's exp of those scores underflows through the denormal range, which Intel cores
    handle in microcode: one prefill softmax took 126 us instead of 23 on the 2026-12-01 Xeon host, and the shipped
    bundle's tick fell by ~0.5 ms (BENCHMARKS.md, 2026-12-01 06:10 section); logits were bit-identical over 1000
    replayed ticks."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else min(os.cpu_count() or 1, 4)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if so.intra_op_num_threads > 1:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def _check_graph(sess: ort.InferenceSession, path: Path, cfg, graph: str, precision: str = "fp32") -> None:
    """Raise BundleError naming `path` when the graph's inputs/outputs disagree with gato.json's config and
    precision."""
    def dims(shape) -> tuple:  # any symbolic axis as "?"
        return tuple(d if isinstance(d, int) else "?" for d in shape)

    got = {i.name: (_ORT_TYPES.get(i.type, i.type), dims(i.shape)) for i in sess.get_inputs()}
    for name, dtype, shape in graph_inputs(cfg, graph, precision):
        if name not in got:
            raise BundleError(f"{path}: graph has no input {name!r} that gato.json's model config implies "
                              f"(graph inputs: {sorted(got)})")
        if got[name] != (dtype, dims(shape)):
            raise BundleError(f"{path}: input {name!r} is {got[name][0]} {got[name][1]}, gato.json's model config "
                              f"implies {dtype} {tuple(shape)}")
    outs = {o.name: (_ORT_TYPES.get(o.type, o.type), dims(o.shape)) for o in sess.get_outputs()}
    for name, dtype, shape in graph_outputs(cfg, graph, precision):
        if name not in outs:
            raise BundleError(f"{path}: graph has no output {name!r}")
        if outs[name][0] != dtype or (name == "logits" and outs[name][1] != dims(shape)):
            raise BundleError(f"{path}: output {name!r} is {outs[name][0]} {outs[name][1]}, gato.json implies "
                              f"{dtype} {tuple(shape)}")


class RuntimePolicy:
    """Policy protocol (`reset`, `set_instruction`, `act`) over a bundle, with a KV cache kept across ticks."""

    def __init__(self, bundle: Bundle, execution_provider: str = "auto", temperature: float = 0.0,
                 seed: int = 0, threads: int | None = None, kv_device: str = "auto"):
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
        self.threads = so.intra_op_num_threads  # CPU threads of each session
        self.sessions: dict[str, ort.InferenceSession] = {}
        for g, f in bundle.graph_files.items():
            try:
                sess = inference_session(f, so, providers)
            except Exception as e:  # onnxruntime raises several types for unreadable graphs
                raise BundleError(f"{f}: cannot be loaded by ONNX Runtime ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}); re-export the bundle") from None
            _check_graph(sess, f, cfg, g, bundle.precision)
            self.sessions[g] = sess
        self.provider = self.sessions["prefill"].get_providers()[0]
        if execution_provider not in ("auto", "cpu") and self.provider != providers[0]:
            warnings.warn(f"execution_provider={execution_provider!r} is not usable here (ONNX Runtime could not "
                          f"start {providers[0]}); running on {self.provider}", RuntimeWarning, stacklevel=2)

        L, H, Dh, P, R = cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.prefix_slots, cfg.ring_slots
        C, S, obs = P + R, self.ctx.S, self.ctx.obs_len
        self._C = C
        self.kv_device = _kv_device(kv_device, self.provider)
        self._xp = np
        if self.kv_device == "cuda":
            import cupy  # noqa: PLC0415 (optional: only for a GPU-resident cache)

            self._xp = cupy
        # Preallocated cache, all layers in one array each, bound per layer once (IO binding over the same memory).
        # Keys are stored transposed (Dh, slots) so scores need no transpose; values of prefix and ring share one
        # buffer (prefix slots first).
        xp = self._xp
        ft = self._ft = bundle.float_dtype  # of every float the graphs take or give: float16 in an fp16 bundle
        self.prefix_k = xp.zeros((L, H, Dh, P), ft)
        self.ring_k = xp.zeros((L, H, Dh, R), ft)
        self.values = xp.zeros((L, H, C, Dh), ft)
        self._prefix_mask = np.full(P, NEG_INF, np.float32)  # (P,) 0 where a prefix slot holds a token
        self._prefix_epoch = 0  # counts prefix encodings: a call set rewrites its prefix mask columns when it changed
        self._prefix_of: tuple | None = None  # (instruction, prompt) the prefix buffers hold, once encoded
        self._ring_step = np.full(R, -1, np.int64)  # (R,) timestep held by each ring slot, -1 = empty
        # Ring visibility for this tick's queries (0 / -inf), set when a tick starts and opened by each write; and
        # for the previous tick's last action, fed with the tick's first call.
        self._ring_vis = np.full(R, NEG_INF, np.float32)
        self._lead_vis = np.full(R, NEG_INF, np.float32)
        # The tick's rotary rows (row 0: previous tick's last action; row 1 + offset: this step), rewritten in place
        # each tick; every call set binds its (contiguous) rows of them once.
        self._cos = np.zeros((1 + S, cfg.head_dim), ft)
        self._sin = np.zeros((1 + S, cfg.head_dim), ft)
        self._a_last = S - 1  # offset of the last action token in a timestep
        self._P, self._K, self._S, self._obs_len, self._A = P, cfg.window_steps, S, obs, cfg.spec.action_size
        self._bin_offset = int(self.tok.bin_offset)

        # Episode-token calls: inputs and outputs preallocated and bound once per call shape (created on first
        # use; a tick uses a handful of shapes), so a call only rewrites a few small arrays in place.
        self._sets: dict[tuple, _CallSet] = {}
        # Instruction features of the instruction-conditioned patch embedding (bound once; rewritten in place).
        self._text_feat = np.zeros(cfg.instruction_features, ft)
        self.instruction = ""
        self._prompt: TimestepTokens | None = None
        self.trace: list[np.ndarray] | None = None  # when a list, every sampled action's logits are appended
        self.timings: list[dict] | None = None  # when a list, `act` appends its phase times (s) (benchmark)
        self._calls: list[float] | None = None
        self.jacobi = True  # exact parallel greedy decoding (see `act_tokens`); False: one call per action token
        self.graph_calls = 0  # episode-token graph calls so far (benchmark statistics)
        self.reset()

    def _bind_cache(self, b: ort.IOBinding) -> None:
        for l in range(self.cfg.n_layers):
            self._bind_kv(b, f"prefix_k_{l}", self.prefix_k[l])
            self._bind_kv(b, f"ring_k_{l}", self.ring_k[l])
            self._bind_kv(b, f"value_{l}", self.values[l])

    def _bind_kv(self, b: ort.IOBinding, name: str, arr, output: bool = False) -> None:
        """Bind a cache-side array of the graphs' float type (numpy, or CuPy on the GPU, by its device address):
        ONNX Runtime reads or writes that memory in place, so the array must never be reallocated (only written
        into)."""
        assert arr.dtype == self._ft and arr.flags.c_contiguous, name
        if self._xp is np:  # host memory: numpy's own bindings (raw-pointer binding was suspected of ROS test flakes)
            if output:
                b.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
            else:
                b.bind_cpu_input(name, arr)
            return
        bind = b.bind_output if output else b.bind_input
        bind(name, "cuda", arr.device.id, self._ft.type, list(arr.shape), arr.data.ptr)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, execution_provider: str = "auto", temperature: float = 0.0,
             seed: int = 0, threads: int | None = None, prompt: Mapping | None = None,
             kv_device: str = "auto") -> "RuntimePolicy":
        """Load a bundle directory. `prompt`: optional Gato prompt episode {"observations": {...}, "actions":
        (T, A)} whose last `prompt_steps` timesteps are pinned after the instruction (few-shot prompting)."""
        policy = cls(Bundle.load(bundle_dir), execution_provider, temperature, seed, threads, kv_device)
        if prompt is not None:
            policy.set_prompt(prompt["observations"], prompt["actions"])
        return policy

    # ------------------------------------------------------------------ Policy protocol
    def reset(self) -> None:
        """Start a new episode: clear the timestep ring, keep the instruction and prompt prefix (encoded again only
        when the instruction or prompt changed: its keys/values depend on nothing else, and the encoding is one
        prefill call, ~20 ms for gato-79m, which callers doing `reset(); set_instruction(text)` paid twice)."""
        self._t = 0
        self._pending: int | None = None  # last action token of the previous tick, not yet in the cache
        self._last_actions: list[int] | None = None  # previous tick's action tokens: the Jacobi guesses
        self._ring_step.fill(-1)
        done = self._prefix_of
        if done is None or done[0] != self.instruction or done[1] is not self._prompt:
            self._encode_prefix()

    def set_instruction(self, text: str) -> None:
        """Set the instruction and start a new episode context (the prefix is encoded here, if the text changed)."""
        if not isinstance(text, str):
            raise ValueError(f"instruction: expected str, got {type(text).__name__}")
        self.instruction = text
        self._text_feat[:] = self.ctx.text_features(text)
        self.reset()

    def set_prompt(self, observations: Mapping[str, np.ndarray] | None, actions: np.ndarray | None = None) -> None:
        """Gato prompting: pin the last `prompt_steps` timesteps of a demonstration after the instruction
        (None clears it). Starts a new episode context."""
        if observations is None:
            self._prompt = None
        else:
            k = self.cfg.prompt_steps
            if actions is None:
                raise ValueError("set_prompt: a prompt needs the demonstration's actions too")
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
        c0 = time.process_time() if timed else 0.0
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
                                 "detokenize": t3 - t2, "tick": t3 - t0, "cpu": time.process_time() - c0})
            self._calls = None
        return out

    def warm_up(self) -> int:
        """Run every call shape a tick can use once, on the current (empty) episode, then start the episode afresh
        (`reset`): the first call of a shape is slower (ONNX Runtime allocates and picks kernels; a GPU provider
        may build for the shape), and on a robot that would land on the first control ticks: on the 2-core CPU
        the first two ticks took 1.6-1.9x the steady tick without it, 1.2x with it (shipped bundle, 3 runs each).
        Returns how many shapes were run. Action tokens are unaffected (tested)."""
        A, calls = self._A, self.graph_calls
        keys = [("tick", lead, g) for lead in (0, 1) for g in (0, A - 1)]
        keys += [("act", p, n) for p in range(A - 1) for n in range(1, A - p)]
        self._ring_vis.fill(NEG_INF)  # nothing but the prefix and each call's own tokens is visible
        self._lead_vis.fill(NEG_INF)
        with _FloatEnv(flush=True):
            for key in keys:
                self._run_set(self._set(key))  # whatever the tokens: nothing is written to the cache
        self.graph_calls = calls
        self.reset()
        return len(keys)

    # ------------------------------------------------------------------ token level
    def act_tokens(self, step: TimestepTokens) -> np.ndarray:
        """Feed one timestep's observation tokens (actions unknown) and decode its A action tokens.

        Greedy decoding is done by exact Jacobi (parallel fixed-point) iteration (Santilli et al. 2023, "Accelerating
        Transformer Inference for Translation via Parallel Decoding"): every call feeds the known token plus guesses
        for all later action positions and returns the prediction at each. The prediction after the last correct
        guess is certain, so each call fixes at least one more token, and the result is token for token the
        sequential greedy decode; only keys/values of inputs proven correct enter the cache. The first call also
        carries the observation, with the previous tick's actions as guesses: when the arm moves smoothly a whole
        tick costs one pass over the weights instead of A. With a temperature, tokens are sampled one call each.
        Denormals are flushed to zero on this thread for the tick only (see `session_options`).
        """
        with _FloatEnv(flush=True):
            return self._act_tokens(step)

    def _act_tokens(self, step: TimestepTokens) -> np.ndarray:
        S, obs, A, K, off = self._S, self._obs_len, self._A, self._K, self._bin_offset
        t = self._t
        cos, sin = rope_full(*rope_tables(np.arange(t * S - 1, (t + 1) * S), self.cfg.head_dim, self.cfg.rope_base))
        self._cos[:], self._sin[:] = cos, sin  # row 0: previous tick's last action; row 1 + offset: this step
        # A ring slot is visible to a query of step s iff it holds a step in (s - K, s] (all cached tokens precede).
        rs = self._ring_step
        self._ring_vis[:] = np.where(rs > max(t - K, -1), 0.0, NEG_INF)
        jacobi = self.temperature == 0.0 and self.jacobi
        # Guesses and predictions are Python lists of token ids: a handful each, faster than numpy at this size.
        guess = self._last_actions[:A - 1] if (jacobi and self._last_actions is not None) else []

        # Call 1: [last action of t-1] + observation of t + guesses for actions 0..A-2.
        lead = 0 if self._pending is None else 1
        cs = self._set(("tick", lead, len(guess)))
        if lead:  # the previous tick's last action still sees step t - K
            self._lead_vis[:] = np.where(rs > max(t - 1 - K, -1), 0.0, NEG_INF)
            cs.tokens[0] = self._pending
        cs.tokens[lead:lead + obs] = step.tokens[0, :obs]
        cs.tokens[lead + obs:] = guess
        cs.io["patches"][:len(cs.image_rows)] = step.patches[0]  # the image rows' patches, in order
        rows = self._run_set(cs)  # (min(T, A), nb): last rows predict actions 0..len(guess)
        logits = rows[-(len(guess) + 1):]
        best = [b + off for b in logits.argmax(1).tolist()]  # greedy token after each row's input
        n_ok = _accepted(best, guess)
        self._write(cs, lead + obs + n_ok)  # observation and the proven guesses
        if self._calls is not None:
            self._calls.append(time.perf_counter())
        final = self._picks(logits, best, n_ok + 1)
        preds = best[n_ok + 1:]

        # Further calls: the last certain token (position p) + guesses for positions p+1..A-2.
        while len(final) < A:
            p = len(final) - 1
            guess = preds[:A - 2 - p] if jacobi else []
            cs = self._set(("act", p, 1 + len(guess)))
            cs.tokens[0] = final[-1]
            cs.tokens[1:] = guess
            logits = self._run_set(cs)  # (n, nb): row i predicts action p + 1 + i
            best = [b + off for b in logits.argmax(1).tolist()]
            n_ok = _accepted(best, guess)
            self._write(cs, 1 + n_ok)
            final += self._picks(logits, best, n_ok + 1)
            preds = best[n_ok + 1:]
            if self._calls is not None:
                self._calls.append(time.perf_counter())
        final = final[:A]
        self._pending = final[-1]
        self._last_actions = final
        self._t = t + 1
        return np.asarray(final, np.int64)

    def _picks(self, logits: np.ndarray, best: list[int], n: int) -> list[int]:
        """The tokens chosen from the first n rows: the greedy ones, or drawn (temperature) / traced one by one."""
        if self.temperature == 0.0 and self.trace is None:
            return best[:n]
        return [self._sample(logits[i]) for i in range(n)]

    def _set(self, key: tuple) -> "_CallSet":
        """The pre-bound call set for an episode-token call of this shape (created on first use). key ("tick",
        lead, g): the observation call, [the previous tick's last action if lead] + this step's observation + g
        action guesses; key ("act", p, n): n action tokens from action position p."""
        cs = self._sets.get(key)
        if cs is None:
            kind, a, n = key
            obs = self._obs_len
            if kind == "tick":  # steps relative to the tick's: -1 for the lead (the previous tick's last action)
                offsets = np.concatenate(([self._a_last] * a, np.arange(obs), obs + np.arange(n))).astype(np.int64)
                rel_steps = np.concatenate((np.full(a, -1), np.zeros(obs + n))).astype(np.int64)
            else:
                offsets = (obs + a + np.arange(n)).astype(np.int64)
                rel_steps = np.zeros(n, np.int64)
            cs = self._sets[key] = _CallSet(self, offsets, rel_steps)
        return cs

    def _run_set(self, cs: "_CallSet") -> np.ndarray:
        """Bring the call's mask up to date (prefix columns when the prefix changed; ring columns from the tick's
        visibility) and run; -> logits. The rotary rows are bound views of the tick's tables."""
        P, C = self._P, self._C
        mask = cs.mask  # (T, P + R + T); the new-token block is causal and fixed
        if cs.prefix_epoch != self._prefix_epoch:
            mask[:, :P] = self._prefix_mask
            cs.prefix_epoch = self._prefix_epoch
        mask[:, P:C] = self._ring_vis
        if cs.lead:
            mask[0, P:C] = self._lead_vis
        self.sessions[cs.graph].run_with_iobinding(cs.binding)
        self.graph_calls += 1
        return cs.logits

    def _write(self, cs: "_CallSet", n: int) -> None:
        """Write the keys/values of the call's first n tokens into their ring slots and open those slots to the
        tick's later queries (one slice copy per buffer when the slots are consecutive, as they are except where a
        tick's lead token wraps the ring)."""
        if n <= 0:
            return
        P, S, K, t = self._P, self._S, self._K, self._t
        a = ((t + cs.rel_list[0]) % K) * S + cs.off_list[0]
        new_k, new_v = cs.new_k[:, :, :n], cs.new_v[:, :, :n]
        if ((t + cs.rel_list[n - 1]) % K) * S + cs.off_list[n - 1] - a == n - 1:
            self.ring_k[:, :, :, a:a + n] = new_k.transpose(0, 1, 3, 2)
            self.values[:, :, P + a:P + a + n] = new_v
            self._ring_step[a:a + n] = t + cs.rel_steps[:n]
            self._ring_vis[a:a + n] = 0.0
        else:
            slots = ((t + cs.rel_steps[:n]) % K) * S + cs.offsets[:n]
            idx = self._xp.asarray(slots)
            self.ring_k[:, :, :, idx] = new_k.transpose(0, 1, 3, 2)
            self.values[:, :, P + idx] = new_v
            self._ring_step[slots] = t + cs.rel_steps[:n]
            self._ring_vis[slots] = 0.0
        if self._xp is not np:  # ONNX Runtime's CUDA stream does not wait for CuPy's: finish the writes first
            self._xp.cuda.get_current_stream().synchronize()

    def _sample(self, logits: np.ndarray) -> int:
        """Greedy by default; with a temperature, a draw from softmax(logits / temperature)."""
        z = logits.reshape(-1).astype(np.float64)  # fp16 logits too: softmax in double
        if self.trace is not None:
            self.trace.append(z.astype(np.float32))
        if self.temperature == 0.0:
            return int(np.argmax(z)) + self.tok.bin_offset
        z = (z - z.max()) / self.temperature
        p = np.exp(z)
        return int(self._rng.choice(z.size, p=p / p.sum())) + self.tok.bin_offset

    def _encode_prefix(self) -> None:
        """Encode the instruction (and prompt) into the prefix buffers: one prefill call, no rotary positions."""
        cfg = self.cfg
        empty = self.tok.tokenize_steps(
            {k: np.zeros((0, *s), np.uint8 if k == "image" else np.float64) for k, s in self._obs_shapes().items()},
            np.zeros((0, cfg.spec.action_size)), cfg.spec)
        ctx = self.ctx.build(self.ctx.text_ids(self.instruction), empty, 0, self._prompt, n_steps=0,
                             text_feat=self._text_feat)
        n = int(ctx["valid"].sum())  # prefix tokens are contiguous from slot 0
        self._prefix_of = None  # until the buffers hold the new prefix (an exception below leaves them cleared)
        self._prefix_mask.fill(NEG_INF)
        self.prefix_k.fill(0.0)
        self.values[:, :, :cfg.prefix_slots].fill(0.0)
        feeds = {"tokens": np.ascontiguousarray(ctx["tokens"][:n]),
                 **self.ctx.embed_inputs(ctx["patches"], ctx["is_image"][:n], ctx["row_bin"][:n], ctx["col_bin"][:n]),
                 **{name: np.ascontiguousarray(ctx[name][:n]) for name in ("local_pos", "prefix_pos")}}
        if cfg.instruction_features:
            feeds["text_feat"] = self._text_feat
        feeds["rope_cos"], feeds["rope_sin"] = rope_full(ctx["rope_cos"][:n], ctx["rope_sin"][:n])
        feeds["mask"] = _call_mask(n, self._C, self._ft)  # nothing cached yet: causal among the prefix
        for k in ("patches", "rope_cos", "rope_sin"):
            feeds[k] = np.ascontiguousarray(feeds[k], self._ft)
        b = self.sessions["prefill"].io_binding()
        for k, arr in feeds.items():
            b.bind_cpu_input(k, arr)
        self._bind_cache(b)
        for k in ("logits", "new_k", "new_v"):
            b.bind_output(k, "cpu")
        with _FloatEnv(flush=True):
            self.sessions["prefill"].run_with_iobinding(b)
        _, new_k, new_v = b.copy_outputs_to_cpu()
        xp = self._xp
        self.prefix_k[:, :, :, :n] = xp.asarray(new_k.transpose(0, 1, 3, 2))
        self.values[:, :, :n] = xp.asarray(new_v)
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        self._prefix_mask[:n] = 0.0
        self._prefix_epoch += 1
        self._prefix_of = (self.instruction, self._prompt)

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


def _call_mask(T: int, C: int, dtype) -> np.ndarray:
    """(T, C + T) additive mask of a call with T new tokens: every cache column closed (callers open the slots
    their queries may see), causal among the new tokens."""
    mask = np.full((T, C + T), NEG_INF, dtype)
    mask[:, C:] = np.triu(mask[:, C:], 1)
    return mask


def _accepted(best: list[int], guess: list[int]) -> int:
    """How many leading guesses equal the greedy prediction made just before them (`best[i]`: the greedy token
    after input i)."""
    n = 0
    while n < len(guess) and best[n] == guess[n]:
        n += 1
    return n


class _CallSet:
    """Preallocated, pre-bound inputs and outputs of one episode-token call shape: tokens at within-timestep
    `offsets` (observation offsets take their layout embeddings, action offsets none). Calls of action tokens only use
    the decode graph (no image branch), anything else the prefill graph."""

    def __init__(self, policy: RuntimePolicy, offsets: np.ndarray, rel_steps: np.ndarray):
        cfg, ctx = policy.cfg, policy.ctx
        T, C = len(offsets), policy._C
        self.offsets, self.rel_steps = offsets, rel_steps  # within-timestep offsets; steps relative to the tick's
        self.lead = bool(rel_steps[0] < 0)  # first token: the previous tick's last action
        self.rel_list, self.off_list = rel_steps.tolist(), offsets.tolist()
        # rows of the tick's rotary tables (row 0: previous tick's last action; row 1 + offset: this step): always
        # consecutive (a lead action, then consecutive offsets of one step), so the inputs are views of the tables
        rope_rows = np.where(rel_steps < 0, 0, 1 + offsets)
        r0 = int(rope_rows[0])
        if not np.array_equal(rope_rows, r0 + np.arange(T)):
            raise AssertionError(f"call rows {rope_rows.tolist()} are not consecutive rotary rows")
        is_image = ctx.is_image[offsets] & (rel_steps == 0)  # this step's patches (a lead action is no image)
        self.image_rows = np.flatnonzero(is_image)
        L, H, Dh = cfg.n_layers, cfg.n_heads, cfg.head_dim
        ft = policy._ft
        mask = _call_mask(T, C, ft)
        self.graph = "decode" if offsets.min() >= ctx.obs_len else "prefill"  # action tokens only: no image branch
        io = {"tokens": np.zeros(T, np.int64)}
        if self.graph == "prefill":
            patches = np.zeros((len(self.image_rows), cfg.patch_dim), np.float32)  # written each tick (`act`)
            io.update(ctx.embed_inputs(patches, is_image, ctx.eval_row_bin[offsets], ctx.eval_col_bin[offsets]))
            io["patches"] = io["patches"].astype(ft)
            io.update({"local_pos": ctx.local_pos[offsets].copy(), "prefix_pos": np.full(T, ctx.prefix_pad, np.int64)})
            if cfg.instruction_features:
                io["text_feat"] = policy._text_feat  # the policy's array: set_instruction rewrites it in place
        io.update({"rope_cos": policy._cos[r0:r0 + T], "rope_sin": policy._sin[r0:r0 + T], "mask": mask})
        self.io = io
        self.tokens, self.mask = io["tokens"], mask
        self.prefix_epoch = -1  # prefix mask columns not written yet
        b = policy.sessions[self.graph].io_binding()
        for k, arr in io.items():
            b.bind_cpu_input(k, arr)
        policy._bind_cache(b)
        rows = min(T, cfg.spec.action_size)
        self.logits = np.zeros((rows, cfg.tokenizer.num_bins), ft)  # read on the host
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        # The new tokens' keys/values stay where the cache lives (copied into it by `_write`).
        self.new_k = policy._xp.zeros((L, H, T, Dh), ft)
        self.new_v = policy._xp.zeros((L, H, T, Dh), ft)
        policy._bind_kv(b, "new_k", self.new_k, output=True)
        policy._bind_kv(b, "new_v", self.new_v, output=True)
        self.binding = b
