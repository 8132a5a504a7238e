"""Checkpoint -> bundle: ONNX graphs (prefill, decode) + gato.json, checked against torch.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), the supported path in torch 2.x (the
TorchScript exporter is deprecated). Both graphs have one dynamic axis (new tokens T); the cache buffers are
static, so ONNX Runtime plans their memory once.

Checks (any failure raises ExportCheckError and leaves no bundle behind):
1. `onnx.checker.check_model` on both graphs;
2. ONNX Runtime vs torch `forward_cached` on random inputs (random cache contents, random masks) for both graphs;
3. multi-step cached decoding: the runtime policy (ONNX Runtime, ring buffer) drives a random episode longer than
   the window; its logits at every action position must match the torch model's full-context forward
   (sliding-window mask) on the same tokens.
Tolerance: max |logit difference| <= 1e-4 (fp32) on random inputs; over the rollout, 1e-4 x max(1, max |logit|):
fp32 rounding grows with the logits' size, and a fine-tuned model's sharper logits (|logit| ~10) differ by ~1e-4.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gato_ros.bundle import CONFIG_FILE, GRAPHS, PRECISIONS, Bundle, bundle_meta, graph_inputs, sha256, write_meta
from gato_ros.model.config import GatoConfig
from gato_ros.model.model import GatoModel
from gato_ros.sequence import ActionNormalizer, ContextBuilder, rope_full
from gato_ros.tokenizer import GatoTokenizer

TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """ONNX disagrees with torch (or is malformed); the message says by how much and where."""


class _Prefill(nn.Module):
    def __init__(self, model: GatoModel):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model.forward_cached(*inputs)


class _Decode(nn.Module):
    def __init__(self, model: GatoModel):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model.decode_cached(*inputs)


def example_inputs(cfg: GatoConfig, graph: str, T: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs for `graph` with T new tokens: random cache contents and masks (each row keeps itself)."""
    out: dict[str, np.ndarray] = {}
    if graph == "prefill":  # about half the new tokens are image positions, their patches compact (N >= 1 rows)
        is_image = rng.random(T) < 0.5
        out.update(ContextBuilder.embed_inputs(rng.normal(size=(max(int(is_image.sum()), 1), cfg.patch_dim)),
                                               is_image, *rng.integers(0, cfg.pos_bins, (2, T))))
    for name, dtype, shape in graph_inputs(cfg, graph):
        shape = tuple((T + cfg.context_tokens if name == "mask" and i == 1 else T) if d == "T" else d
                      for i, d in enumerate(shape))
        if name in ("patches", "patch_row_bin", "patch_col_bin", "embed_index"):
            out[name] = out[name].astype(dtype)
            continue
        if name == "tokens":
            v = rng.integers(0, cfg.vocab_size, shape)
        elif name in ("local_pos",):
            v = rng.integers(0, cfg.observation_tokens + 1, shape)
        elif name in ("prefix_pos",):
            v = rng.integers(0, cfg.prefix_slots + 1, shape)
        elif name == "mask":
            v = np.where(rng.random(shape) < 0.3, -np.inf, 0.0)
            c = shape[1] - T  # the new tokens' block: causal, each row keeps itself
            v[:, c:] += np.triu(np.full((T, T), -np.inf), 1)
            v[np.arange(T), c + np.arange(T)] = 0.0
        elif name == "rope_cos":
            ang = rng.uniform(0, 100, (T, cfg.head_dim // 2))
            v, out["rope_sin"] = rope_full(np.cos(ang), np.sin(ang))
            out["rope_sin"] = out["rope_sin"].astype(np.float32)
        elif name == "rope_sin":
            continue
        else:
            v = rng.normal(size=shape)
        out[name] = np.asarray(v).astype(dtype)
    return {n: out[n] for n, _, _ in graph_inputs(cfg, graph)}


def export_graph(model: GatoModel, graph: str, path: Path) -> None:
    """Export `graph` ("prefill" or "decode") of `model` to `path` with the names of `gato_ros.bundle`."""
    cfg = model.cfg
    rng = np.random.default_rng(0)
    T = 8 if graph == "prefill" else 3
    ex = example_inputs(cfg, graph, T, rng)
    names = list(ex)
    args = tuple(torch.from_numpy(ex[n]) for n in names)
    module = _Prefill(model) if graph == "prefill" else _Decode(model)
    t = torch.export.Dim("T", min=1, max=cfg.context_tokens)
    n_img = torch.export.Dim("N", min=1, max=cfg.context_tokens)
    dims = {"T": t, "N": n_img}
    axes = {n: {0: dims[shape[0]]} for n, _, shape in graph_inputs(cfg, graph) if shape and shape[0] in dims}
    axes["mask"] = {0: t, 1: t + cfg.context_tokens}
    dynamic = (tuple(axes.get(n) for n in names),)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, output_names=["logits", "new_k",
                          "new_v"], dynamic_shapes=dynamic, optimize=True, external_data=False, verbose=False)


def _ort_session(path: Path, threads: int = 1):
    from gato_ros.runtime import inference_session, session_options

    return inference_session(path, session_options(threads), ["CPUExecutionProvider"])


def check_graphs(model: GatoModel, files: dict[str, Path], seed: int = 0) -> dict[str, float]:
    """Checks 1 and 2 of the module docstring; returns max |diff| per graph and output."""
    import onnx

    cfg = model.cfg
    rng = np.random.default_rng(seed)
    report: dict[str, float] = {}
    for graph, path in files.items():
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as e:
            raise ExportCheckError(f"{path}: ONNX checker failed: {e}") from None
        sess = _ort_session(path)
        for T in ((1, 5, cfg.observation_tokens + 1) if graph == "prefill" else (1, cfg.spec.action_size - 1)):
            ex = example_inputs(cfg, graph, T, rng)
            got = sess.run(None, ex)
            with torch.no_grad():
                fn = model.forward_cached if graph == "prefill" else model.decode_cached
                want = fn(*(torch.from_numpy(v) for v in ex.values()))
            for name, g, w in zip(("logits", "new_k", "new_v"), got, want):
                d = float(np.max(np.abs(g - w.numpy())))
                key = f"{graph}.{name}"
                report[key] = max(report.get(key, 0.0), d)
                if not d <= TOLERANCE:
                    raise ExportCheckError(f"{path}: ONNX Runtime and torch differ on random inputs (T={T}): "
                                           f"max |{name} diff| = {d:.3g} > {TOLERANCE}")
    return report


def random_episode(cfg: GatoConfig, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Random observations of the model's layout (values in plausible joint ranges)."""
    rng = np.random.default_rng(seed)
    spec = cfg.spec
    obs: dict[str, np.ndarray] = {}
    if spec.image_shape is not None:
        obs["image"] = rng.integers(0, 256, (steps, *spec.image_shape), dtype=np.uint8)
    for k in spec.continuous_keys:
        obs[k] = rng.normal(scale=0.5, size=(steps, int(spec.continuous[k])))
    return obs


def check_rollout(model: GatoModel, bundle_dir: Path, steps: int, instruction: str = "pick up the red cube",
                  seed: int = 0, agreement: bool = False) -> dict[str, Any]:
    """Check 3: runtime (ONNX Runtime, KV ring buffer) vs torch full forward over `steps` timesteps.

    Returns {"max_abs_logit_diff", "max_abs_logit" (torch's), "steps", "tokens_equal"}; the runtime's greedy tokens are teacher-forced into
    the torch context, so equal argmaxes at every position mean torch's greedy decoding yields the same tokens."""
    from gato_ros.runtime import RuntimePolicy

    cfg = model.cfg
    policy = RuntimePolicy.load(bundle_dir, execution_provider="cpu", threads=1)
    policy.set_instruction(instruction)
    tok = GatoTokenizer(cfg.tokenizer)
    obs = random_episode(cfg, steps, seed)
    trace: list[np.ndarray] = []
    policy.trace = trace
    chosen = np.stack([policy.act_tokens(tok.tokenize_steps({k: v[t:t + 1] for k, v in obs.items()}, None,
                                                             cfg.spec)) for t in range(steps)])  # (steps, A)
    policy.trace = None
    runtime_logits = np.stack(trace).reshape(steps, cfg.spec.action_size, -1)
    torch_logits = torch_action_logits(model, instruction, obs, chosen)
    diff = float(np.max(np.abs(runtime_logits - torch_logits)))
    same = np.argmax(torch_logits, -1) + tok.bin_offset == chosen
    out = {"max_abs_logit_diff": diff, "max_abs_logit": float(np.max(np.abs(torch_logits))), "steps": steps,
           "tokens_equal": bool(same.all())}
    if agreement:  # share of action tokens torch's greedy choice agrees with (given the same history)
        out["token_agreement"] = float(same.mean())
    return out


def torch_action_logits(model: GatoModel, instruction: str, obs: dict[str, np.ndarray], action_tokens: np.ndarray,
                        prompt=None) -> np.ndarray:
    """Torch reference: logits (steps, A, num_bins) at every action-predicting position of the whole episode,
    one full-context forward with the sliding-window mask, actions teacher-forced."""
    cfg = model.cfg
    ctx = ContextBuilder(cfg)
    steps = action_tokens.shape[0]
    st = ctx.tok.tokenize_steps(obs, None, cfg.spec)
    st.tokens[:, ctx.obs_len:] = action_tokens
    batch = ctx.build(ctx.text_ids(instruction), st, 0, prompt, text_feat=ctx.text_features(instruction))
    with torch.no_grad():
        logits = model({k: torch.from_numpy(v)[None] for k, v in batch.items()})[0].numpy()
    base = ctx.P + np.arange(steps)[:, None] * ctx.S + ctx.obs_len - 1 + np.arange(cfg.spec.action_size)
    return logits[base]  # (steps, A, num_bins)


def export_checkpoint(ckpt: dict[str, Any], out: str | Path, name: str | None = None, rollout_steps: int | None = None,
                      progress=None, precision: str = "fp32") -> dict[str, Any]:
    """Write and check a bundle at `out` from a loaded checkpoint. Returns gato.json's content.

    precision "int8": the fp32 graphs are exported and checked as usual, then replaced by int8-weight copies
    (`gato_ros.model.quantize`); their deviation from torch (max logit difference, greedy-token agreement on the
    cached rollout) is recorded under export_check.int8 -- closed-loop parity is for `gato-ros eval` to show.
    precision "fp16": likewise, half-precision copies (`gato_ros.model.quantize.convert_fp16`; float inputs and
    outputs, the KV cache included, become float16), their deviation under export_check.fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    cfg = GatoConfig.from_dict(ckpt["config"])
    model = GatoModel(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    normalizer = ActionNormalizer.from_dict(ckpt["normalizer"])
    out = Path(out)
    name = name or out.name
    robot = ckpt.get("robot") or {
        "joint_names": [f"joint_{i}" for i in range(cfg.spec.action_size)],
        "joint_limits": [[-np.pi, np.pi]] * cfg.spec.action_size, "control_rate_hz": 20.0}
    provenance = {
        "git_commit": ckpt.get("git_commit", "unknown"),
        "data": ckpt.get("data", []),
        "episodes": ckpt.get("episodes"),
        "train_config": ckpt.get("train_config"),
        "step": ckpt.get("step"),
        "val_loss": ckpt.get("val_loss"),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    meta = bundle_meta(cfg, normalizer, robot, name, provenance)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out.parent if out.parent.exists() else None))
    try:
        files = {}
        for g in GRAPHS:
            if progress:
                progress(f"export {g}")
            files[g] = tmp / f"{g}.onnx"
            export_graph(model, g, files[g])
            meta["graphs"][g] = {"file": files[g].name, "sha256": sha256(files[g]),
                                 "inputs": [n for n, _, _ in graph_inputs(cfg, g)],
                                 "outputs": ["logits", "new_k", "new_v"]}
        write_meta(tmp, meta)
        if progress:
            progress("check graphs")
        report = check_graphs(model, files)
        if progress:
            progress("check cached rollout")
        steps = 2 * cfg.window_steps + 2 if rollout_steps is None else rollout_steps
        roll = None
        if steps > 0:  # 0 skips it (the benchmark's throw-away random models)
            roll = check_rollout(model, tmp, steps)
            allowed = TOLERANCE * max(1.0, roll["max_abs_logit"])
            if not roll["max_abs_logit_diff"] <= allowed:
                raise ExportCheckError(f"cached multi-step decoding ({steps} steps through a {cfg.window_steps}-step "
                                       f"ring buffer) differs from torch: max |logit diff| = "
                                       f"{roll['max_abs_logit_diff']:.3g} > {allowed:.3g} ({TOLERANCE} x max(1, "
                                       f"max |logit| = {roll['max_abs_logit']:.3g}))")
        meta["export_check"] = {"tolerance": TOLERANCE, "random_inputs": report, "rollout": roll}
        meta["precision"] = precision
        if precision != "fp32":
            from gato_ros.model.quantize import convert_fp16, quantize_int8

            if progress:
                progress(f"convert {precision}")
            for g in GRAPHS:
                fp32 = tmp / f"{g}.fp32.onnx"
                files[g].rename(fp32)
                (quantize_int8 if precision == "int8" else convert_fp16)(fp32, files[g])
                fp32.unlink()
                meta["graphs"][g]["sha256"] = sha256(files[g])
            write_meta(tmp, meta)
            if steps > 0:
                q = check_rollout(model, tmp, steps, agreement=True)
                if not np.isfinite(q["max_abs_logit_diff"]):
                    raise ExportCheckError(f"{precision} graphs produce non-finite logits")
                meta["export_check"][precision] = q
        write_meta(tmp, meta)
        # the training-only goal head too (33k weights, no graph uses it): a fine-tune (`train --init` the bundle,
        # --goal-weight) then continues the auxiliary loss from the trained head instead of a fresh one
        head = {"goal_head": ckpt["goal_head"]} if ckpt.get("goal_head") else {}
        torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "normalizer": normalizer.to_dict(),
                    "robot": robot, "git_commit": provenance["git_commit"], **head}, tmp / "model.pt")
        (tmp / "README.md").write_text(model_card(meta))
        Bundle.load(tmp)  # what the runtime will see
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def upgrade_bundle(bundle_dir: str | Path, progress=None) -> dict[str, Any]:
    """Re-export a bundle's graphs from its own `model.pt` in this code's graph format, keeping everything else it
    holds: gato.json's records (evaluation, provenance, ...), the model card and its pictures, `model.pt`.
    gato.json's `format`, `graphs` and `export_check` are replaced, and `provenance.graphs_reexported` says when,
    from which format and with which code. The graphs are checked against torch like any export before anything
    in the bundle changes. Returns the new gato.json content."""
    from gato_ros.model.train import git_commit

    d = Path(bundle_dir)
    cfg_file, weights = d / CONFIG_FILE, d / "model.pt"
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{d}: not a bundle with its weights ({CONFIG_FILE} and model.pt needed)")
    meta = json.loads(cfg_file.read_text())
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    with tempfile.TemporaryDirectory(prefix=f".{d.name}.upgrade.", dir=d.parent) as tmp:
        fresh = export_checkpoint(ckpt, Path(tmp) / d.name, meta.get("name"), None, progress,
                                  meta.get("precision", "fp32"))
        staged = []
        for g in GRAPHS:  # next to their targets first, so the swap below cannot fail half way for want of space
            part = d / f".{g}.onnx.new"
            shutil.copyfile(Path(tmp) / d.name / fresh["graphs"][g]["file"], part)
            staged.append((part, d / fresh["graphs"][g]["file"]))
    old_format = meta.get("format")
    meta.update(format=fresh["format"], graphs=fresh["graphs"], export_check=fresh["export_check"])
    meta.setdefault("provenance", {})["graphs_reexported"] = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from_format": old_format, "git_commit": git_commit(), "torch": torch.__version__}
    for part, target in staged:
        part.replace(target)
    write_meta(d, meta)
    Bundle.load(d)
    return meta


def model_card(meta: dict[str, Any]) -> str:
    m, p = meta["model"], meta["provenance"]
    chk = meta.get("export_check", {}).get("rollout") or {}
    precision = meta.get("precision", "fp32")
    var = meta.get("export_check", {}).get(precision) or {}
    if var:
        precision += (f" (graphs' greedy-token agreement with torch {var['token_agreement']:.1%} over the export "
                      f"rollout; max |logit diff| {var['max_abs_logit_diff']:.3g})")
    return f"""# {meta['name']}

Gato-style decoder-only transformer (preset `{m['name']}`: {m['n_layers']} layers, width {m['d_model']},
{m['n_heads']} heads, FF {m['d_ff']}) controlling a {len(meta['joint_names'])}-joint arm from a
{meta['image_size'][0]}x{meta['image_size'][1]} RGB camera, joint positions/velocities and a text instruction.

- Joints: {', '.join(meta['joint_names'])}
- Control rate: {meta['control_rate_hz']} Hz; context: instruction + {m['window_steps']} timesteps
  ({meta['context']['context_tokens']} cache slots)
- Actions: {meta['action']['normalization']['mode']} joint targets, {meta['action']['num_bins']} uniform bins
- Trained: step {p.get('step')}, validation loss {p.get('val_loss')}, git {p.get('git_commit')}
- Data: {', '.join(map(str, p.get('data') or [])) or 'in-memory'}
- Export check: ONNX Runtime vs torch max |logit diff| {chk.get('max_abs_logit_diff')} over {chk.get('steps')} steps
- Precision: {precision}
- Evaluation: see `eval` in `{CONFIG_FILE}`

Run: `gato_ros.runtime.RuntimePolicy.load("<this dir>")`, or `ros2 launch gato_ros arm.launch.py model:=<this dir>`.
"""
