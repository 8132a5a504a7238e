"""Export (torch -> ONNX bundle, checked) and the torch-free runtime policy over real ONNX Runtime."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gato_ros.bundle import Bundle, BundleError
from gato_ros.model.config import preset
from gato_ros.model.export import export_checkpoint, random_episode, torch_action_logits
from gato_ros.model.model import GatoModel
from gato_ros.runtime import RuntimePolicy
from gato_ros.sequence import ActionNormalizer
from gato_ros.tokenizer import GatoTokenizer


def _checkpoint(seed: int = 0):
    torch.manual_seed(seed)
    cfg = preset("gato-tiny")
    model = GatoModel(cfg)
    with torch.no_grad():  # spread the logits so greedy choices are far from ties (float noise ~1e-6)
        model.head.weight.mul_(40.0)
    norm = ActionNormalizer("delta", -0.05 * np.ones(7), 0.05 * np.ones(7))
    robot = {"joint_names": [f"j{i}" for i in range(7)], "joint_limits": [[-3.0, 3.0]] * 6 + [[0.0, 0.04]],
             "control_rate_hz": 20.0}
    return {"model": model.state_dict(), "config": cfg.to_dict(), "normalizer": norm.to_dict(), "robot": robot,
            "git_commit": "test"}, model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    ckpt, model = _checkpoint()
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    meta = export_checkpoint(ckpt, out)
    return out, model.eval(), meta


def test_import_runtime_leaves_torch_out():
    code = "import sys, gato_ros.runtime, gato_ros.bundle; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundle_contents_and_export_check(bundle):
    out, _, meta = bundle
    for f in ("gato.json", "prefill.onnx", "decode.onnx", "model.pt", "README.md"):
        assert (out / f).is_file(), f
    data = json.loads((out / "gato.json").read_text())
    for key in ("tokenizer", "image_size", "observation_layout", "joint_names", "joint_limits", "action", "context",
                "text_tokenizer", "provenance", "eval"):
        assert key in data
    assert data["provenance"]["git_commit"] == "test"
    chk = data["export_check"]
    assert chk["rollout"]["max_abs_logit_diff"] <= 1e-4 and chk["rollout"]["tokens_equal"]
    assert max(chk["random_inputs"].values()) <= 1e-4


def test_rollout_tolerance_scales_with_the_logits(monkeypatch, tmp_path):
    """1e-4 x max(1, max |logit|): a fine-tuned model's logits near 10 carry fp32 rounding near 1e-4 (seen: 1.19e-4),
    which is not a wrong graph; the same difference on logits of size 1 still fails."""
    import gato_ros.model.export as export

    ckpt, _ = _checkpoint()
    fake = {"max_abs_logit_diff": 5e-4, "steps": 4, "tokens_equal": True}
    monkeypatch.setattr(export, "check_rollout", lambda *a, **k: {**fake, "max_abs_logit": 10.0})
    meta = export.export_checkpoint(ckpt, tmp_path / "sharp", rollout_steps=4)
    assert meta["export_check"]["rollout"]["max_abs_logit"] == 10.0
    monkeypatch.setattr(export, "check_rollout", lambda *a, **k: {**fake, "max_abs_logit": 1.0})
    with pytest.raises(export.ExportCheckError, match=r"0.0005 > 0.0001 \(0.0001 x max\(1, max \|logit\| = 1\)\)"):
        export.export_checkpoint(ckpt, tmp_path / "wrong", rollout_steps=4)
    assert not (tmp_path / "wrong").exists()


def test_runtime_equals_torch_over_60_steps_overflowing_the_window(bundle):
    """Greedy action tokens of the ONNX runtime (ring-buffer KV cache) are the torch model's, over 60 steps
    through a 3-step window. Torch sees the runtime's tokens teacher-forced in one full-context forward: equal
    argmaxes at every action position is exactly torch's own greedy decoding."""
    out, model, _ = bundle
    cfg = model.cfg
    policy = RuntimePolicy.load(out, execution_provider="cpu")
    assert policy.provider == "CPUExecutionProvider"
    policy.set_instruction("put the red cube in the bin")
    tok = GatoTokenizer(cfg.tokenizer)
    obs = random_episode(cfg, 60, seed=3)
    policy.trace = []
    chosen = np.stack([policy.act_tokens(tok.tokenize_steps({k: v[t:t + 1] for k, v in obs.items()}, None, cfg.spec))
                       for t in range(60)])
    want = torch_action_logits(model, "put the red cube in the bin", obs, chosen)  # (60, 7, nb)
    np.testing.assert_array_equal(np.argmax(want, -1) + tok.bin_offset, chosen)
    got = np.stack(policy.trace).reshape(want.shape)
    assert np.max(np.abs(got - want)) <= 1e-4
    assert len(np.unique(chosen)) > 10  # not a degenerate constant policy


def test_jacobi_decoding_equals_sequential_and_saves_calls(bundle):
    """Exact parallel decoding: identical tokens to one-call-per-token greedy decoding; with a steady observation
    the previous tick's actions are right guesses, so a tick takes fewer than A graph calls."""
    out, model, _ = bundle
    tok = GatoTokenizer(model.cfg.tokenizer)
    obs = random_episode(model.cfg, 12, seed=5)
    steady = {k: np.repeat(v[:1], 12, 0) for k, v in obs.items()}
    for episode in (obs, steady):
        runs, calls = [], []
        for jacobi in (False, True):
            p = RuntimePolicy.load(out, execution_provider="cpu")
            p.jacobi = jacobi
            p.set_instruction("go")
            runs.append(np.stack([p.act_tokens(tok.tokenize_steps({k: v[t:t + 1] for k, v in episode.items()},
                                                                  None, model.cfg.spec)) for t in range(12)]))
            calls.append(p.graph_calls)
        np.testing.assert_array_equal(runs[0], runs[1])
        assert calls[0] == 12 * 7 and calls[1] <= calls[0]
    assert calls[1] < calls[0]  # the steady episode: guesses hold


def test_act_is_deterministic_after_reset_and_within_limits(bundle):
    """Episodes on one policy act exactly as on a fresh one: after reset, and after a new instruction (its call
    sets, made in the first episode, must take the new prefix's mask)."""
    out, _, _ = bundle
    policy = RuntimePolicy.load(out, execution_provider="cpu")
    obs = random_episode(policy.cfg, 8, seed=1)

    def run(p=policy):
        return np.stack([p.act({k: v[t] for k, v in obs.items()}) for t in range(8)])

    policy.set_instruction("reach")
    a = run()
    policy.reset()
    np.testing.assert_array_equal(run(), a)
    assert a.shape == (8, 7) and a.dtype == np.float64
    assert np.all(a >= policy.joint_limits[:, 0]) and np.all(a <= policy.joint_limits[:, 1])
    # delta mode: targets are near the current joint positions (normaliser range +-0.05)
    assert np.all(np.abs(a[:, :6] - obs["joint_pos"][:, :6]) <= 0.05 + 1e-9)
    policy.set_instruction("a different instruction")
    b = run()
    assert not np.array_equal(b, a)
    fresh = RuntimePolicy.load(out, execution_provider="cpu")
    fresh.set_instruction("a different instruction")
    np.testing.assert_array_equal(run(fresh), b)


def test_prefix_is_encoded_once_per_instruction_or_prompt(bundle):
    """The prefix's keys/values depend on the instruction and prompt only: `reset(); set_instruction(text)` (the
    policy node and rollouts start every episode so) encodes it once, a repeated instruction or a reset not at all,
    a new prompt again; and every episode still acts as on a fresh policy."""
    out, _, _ = bundle
    policy = RuntimePolicy.load(out, execution_provider="cpu")
    obs = random_episode(policy.cfg, 6, seed=7)

    def episode(text, p=policy):
        p.reset()
        p.set_instruction(text)
        return np.stack([p.act({k: v[t] for k, v in obs.items()}) for t in range(6)])

    encodings = lambda: policy._prefix_epoch  # noqa: E731
    n = encodings()
    a = episode("reach the red cube")
    assert encodings() == n + 1
    b = episode("put the red cube in the bin")
    assert encodings() == n + 2
    np.testing.assert_array_equal(episode("put the red cube in the bin"), b)  # same text: nothing to encode
    assert encodings() == n + 2
    np.testing.assert_array_equal(episode("reach the red cube"), a)
    assert encodings() == n + 3
    fresh = RuntimePolicy.load(out, execution_provider="cpu")
    np.testing.assert_array_equal(episode("reach the red cube", fresh), a)
    demo = random_episode(policy.cfg, 3, seed=8)
    policy.set_prompt(demo, demo["joint_pos"] + 0.01)
    assert encodings() == n + 4
    prompted = episode("reach the red cube")
    assert encodings() == n + 4 and not np.array_equal(prompted, a)
    policy.set_prompt(None)
    np.testing.assert_array_equal(episode("reach the red cube"), a)
    assert encodings() == n + 5


def test_warm_up_runs_every_call_shape_and_leaves_the_actions_alone(bundle):
    """After `warm_up` no tick meets a call shape it has not run (Jacobi or one call per token), and the policy
    acts exactly as a fresh one over 30 ticks through the 3-step window."""
    out, _, _ = bundle
    obs = random_episode(RuntimePolicy.load(out, execution_provider="cpu").cfg, 30, seed=2)
    acts = {}
    for warm in (False, True):
        for jacobi in (True, False):
            policy = RuntimePolicy.load(out, execution_provider="cpu")
            policy.jacobi = jacobi
            policy.set_instruction("put the red cube in the bin")
            if warm:
                n = policy.warm_up()
                shapes = set(policy._sets)
                assert n == len(shapes) and policy.graph_calls == 0
            acts[warm, jacobi] = np.stack([policy.act({k: v[t] for k, v in obs.items()}) for t in range(30)])
            if warm:
                assert set(policy._sets) == shapes  # every shape the ticks used was warmed up
    np.testing.assert_array_equal(acts[True, True], acts[False, True])
    np.testing.assert_array_equal(acts[True, False], acts[False, False])


def test_two_thread_sessions_stop_spinning_between_calls_and_act_as_one_thread(bundle):
    """A tick alternates two sessions; with 2 threads each session's workers must stop spinning when its call
    returns (otherwise, on 2 cores, they take the core the other session needs). Same actions as 1 thread."""
    out, _, _ = bundle
    obs = random_episode(preset("gato-tiny"), 10, seed=3)
    acts = []
    for threads in (1, 2):
        policy = RuntimePolicy.load(out, execution_provider="cpu", threads=threads)
        for name, sess in policy.sessions.items():
            so = sess.get_session_options()
            assert so.intra_op_num_threads == threads, name
            assert so.get_session_config_entry("session.set_denormal_as_zero") == "1", name
            if threads > 1:
                assert so.get_session_config_entry("session.force_spinning_stop") == "1", name
        policy.set_instruction("reach")
        acts.append(np.stack([policy.act({k: v[t] for k, v in obs.items()}) for t in range(10)]))
    np.testing.assert_allclose(acts[1], acts[0], atol=1e-9)


def test_denormals_are_flushed_in_the_graph_calls_only(bundle):
    """Denormals are flushed to zero inside the policy's graph calls (an exp of -inf-masked attention scores passes
    through them, which Intel cores handle in microcode), and nowhere else: loading a policy and acting leave the
    thread's own floats IEEE (ONNX Runtime's option would flush them for good on the thread that creates a process's
    first session). A fresh process, since only its first session would."""
    out, _, _ = bundle
    code = ("import numpy as np\n"
            "from gato_ros.model.config import preset\n"
            "from gato_ros.model.export import random_episode\n"
            "from gato_ros.runtime import RuntimePolicy\n"
            "x = np.array([1e-39], np.float32)\n"
            "before = float((x * np.float32(2))[0])\n"
            f"p = RuntimePolicy.load({str(out)!r}, execution_provider='cpu', threads=1)\n"
            "loaded = float((x * np.float32(2))[0])\n"
            "obs = random_episode(preset('gato-tiny'), 3, seed=2)\n"
            "p.set_instruction('go')\n"
            "[p.act({k: v[t] for k, v in obs.items()}) for t in range(3)]\n"
            "print(before, loaded, float((x * np.float32(2))[0]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [float(v) for v in r.stdout.split()] == pytest.approx([2e-39] * 3, rel=1e-3, abs=0)  # not flushed

    from gato_ros import runtime

    if runtime._LIBM is None:
        pytest.skip("the calling thread's flush is x86-64 Linux only")
    x = np.array([1e-39], np.float32)
    with runtime._FloatEnv(flush=True):
        inside = float((x * np.float32(2))[0])
    assert inside == 0.0 and float((x * np.float32(2))[0]) == pytest.approx(2e-39, rel=1e-3, abs=0)

    class Spy:  # records, at every graph call, what the calling thread makes of a denormal
        def __init__(self, sess):
            self.sess, self.seen = sess, []

        def run_with_iobinding(self, binding):
            self.seen.append(float((x * np.float32(2))[0]))
            return self.sess.run_with_iobinding(binding)

        def __getattr__(self, name):
            return getattr(self.sess, name)

    policy = RuntimePolicy.load(out, execution_provider="cpu", threads=1)
    policy.sessions = {g: Spy(sess) for g, sess in policy.sessions.items()}
    policy.set_instruction("go")
    obs = random_episode(preset("gato-tiny"), 3, seed=2)
    [policy.act({k: v[t] for k, v in obs.items()}) for t in range(3)]
    seen = [v for spy in policy.sessions.values() for v in spy.seen]
    assert len(seen) >= 4 and set(seen) == {0.0}  # flushed in every call: the prefix encoding and 3 ticks
    assert float((x * np.float32(2))[0]) > 0.0


def test_temperature_sampling_is_seeded(bundle):
    out, _, _ = bundle
    obs = random_episode(preset("gato-tiny"), 4, seed=2)
    runs = []
    for _ in range(2):
        p = RuntimePolicy.load(out, execution_provider="cpu", temperature=1.0, seed=7)
        runs.append(np.stack([p.act({k: v[t] for k, v in obs.items()}) for t in range(4)]))
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="temperature"):
        RuntimePolicy.load(out, temperature=-1)


def test_prompt_prefix_matches_torch(bundle):
    """Gato prompting: a demonstration's last timesteps pinned after the instruction, runtime == torch."""
    out, model, _ = bundle
    cfg = model.cfg
    tok = GatoTokenizer(cfg.tokenizer)
    demo_obs = random_episode(cfg, 5, seed=9)
    demo_act = demo_obs["joint_pos"] + 0.01
    policy = RuntimePolicy.load(out, execution_provider="cpu",
                                prompt={"observations": demo_obs, "actions": demo_act})
    policy.set_instruction("stack")
    obs = random_episode(cfg, 7, seed=4)
    policy.trace = []
    chosen = np.stack([policy.act_tokens(tok.tokenize_steps({k: v[t:t + 1] for k, v in obs.items()}, None, cfg.spec))
                       for t in range(7)])
    k = cfg.prompt_steps
    pobs = {key: v[-k:] for key, v in demo_obs.items()}
    prompt = tok.tokenize_steps(pobs, policy.normalizer.normalize(demo_act[-k:], pobs["joint_pos"]), cfg.spec)
    want = torch_action_logits(model, "stack", obs, chosen, prompt=prompt)
    np.testing.assert_array_equal(np.argmax(want, -1) + tok.bin_offset, chosen)
    assert np.max(np.abs(np.stack(policy.trace).reshape(want.shape) - want)) <= 1e-4


def test_bad_observation_is_named(bundle):
    out, _, _ = bundle
    policy = RuntimePolicy.load(out, execution_provider="cpu")
    obs = {k: v[0] for k, v in random_episode(policy.cfg, 1, 0).items()}
    with pytest.raises(ValueError, match="image.*resize"):
        policy.act(dict(obs, image=np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(ValueError, match="joint_vel"):
        policy.act({k: v for k, v in obs.items() if k != "joint_vel"})


def test_kv_cache_device_choice(bundle):
    """The cache stays in host memory on the CPU provider; asking for GPU memory there, or for an unknown place,
    fails at load with the reason (the GPU-resident path itself needs a GPU: scripts/bench_gpu.sh checks it)."""
    out, _, _ = bundle
    assert RuntimePolicy.load(out, execution_provider="cpu").kv_device == "cpu"
    with pytest.raises(ValueError, match="needs the CUDA or TensorRT provider"):
        RuntimePolicy.load(out, execution_provider="cpu", kv_device="cuda")
    with pytest.raises(ValueError, match="choose auto, cpu or cuda"):
        RuntimePolicy.load(out, execution_provider="cpu", kv_device="gpu")


def _copy(src, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def test_missing_graph_fails_at_load_naming_file(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    (b / "decode.onnx").unlink()
    with pytest.raises(BundleError, match="decode.onnx.*missing"):
        RuntimePolicy.load(b)


def test_corrupt_graph_fails_at_load_naming_file(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    (b / "prefill.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="prefill.onnx.*corrupt"):
        RuntimePolicy.load(b)
    meta = json.loads((b / "gato.json").read_text())  # without the recorded hash: ORT's own error, same file
    del meta["graphs"]["prefill"]["sha256"]
    (b / "gato.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="prefill.onnx.*cannot be loaded"):
        RuntimePolicy.load(b)


def test_config_graph_mismatch_fails_at_load(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    meta = json.loads((b / "gato.json").read_text())
    meta["model"]["window_steps"] = 5
    (b / "gato.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"prefill.onnx: input 'ring_k_0' is float32 \(4, 16, 114\), gato.json's model config implies float32 \(4, 16, 190\)"):
        RuntimePolicy.load(b)
    (b / "gato.json").write_text("{not json")
    with pytest.raises(BundleError, match="gato.json: not valid JSON"):
        Bundle.load(b)


def _variant(precision: str, out, agreement: float, logit_diff: float) -> RuntimePolicy:
    """Export the test checkpoint at `precision` to `out` and check the export's record of it: the fp32 graphs
    were checked first, the variant's greedy tokens agree with torch's at least `agreement` of the time."""
    ckpt, _ = _checkpoint()
    meta = export_checkpoint(ckpt, out, precision=precision)
    assert meta["precision"] == precision
    q = meta["export_check"][precision]
    assert q["token_agreement"] >= agreement and q["max_abs_logit_diff"] < logit_diff
    assert meta["export_check"]["rollout"]["max_abs_logit_diff"] <= 1e-4  # the fp32 check still ran
    return RuntimePolicy.load(out, execution_provider="cpu")


def test_int8_bundle_close_to_fp32(bundle, tmp_path):
    """The int8 variant: fp32 graphs checked first, then int8 weights; greedy actions nearly all agree."""
    policy = _variant("int8", tmp_path / "q", 0.9, 1.0)
    obs = {k: v[0] for k, v in random_episode(bundle[1].cfg, 1, 0).items()}
    assert policy.act(obs).shape == (7,)


def test_fp16_bundle_keeps_cache_and_calls_in_half_precision_and_stays_close(bundle, tmp_path):
    """The fp16 variant (for GPUs): fp32 graphs checked first, then half precision throughout, the graphs' float
    inputs and outputs and the runtime's KV cache included; greedy actions nearly all agree with torch. A bundle
    whose gato.json states another precision than its graphs have fails at load, naming the input."""
    _, model, _ = bundle
    policy = _variant("fp16", tmp_path / "h", 0.95, 0.5)
    types = {i.name: i.type for s in policy.sessions.values() for i in [*s.get_inputs(), *s.get_outputs()]}
    assert types["ring_k_0"] == types["mask"] == types["patches"] == types["new_k"] == "tensor(float16)"
    assert policy.ring_k.dtype == policy.values.dtype == policy.prefix_k.dtype == np.float16
    obs = random_episode(model.cfg, 12, 0)
    ref = RuntimePolicy.load(bundle[0], execution_provider="cpu")
    got, want = [], []
    for p, out in ((policy, got), (ref, want)):
        p.set_instruction("reach the red cube")
        for t in range(12):  # through the 3-step window four times
            out.append(p.act({k: v[t] for k, v in obs.items()}))
    got, want = np.stack(got), np.stack(want)
    assert np.all(np.isfinite(got)) and np.all(np.abs(got - want) <= 0.02)  # mu-law bins of a 0.05 rad delta range
    assert np.mean(np.abs(got - want) < 1e-9) >= 0.8  # mostly the very same bins
    b = _copy(tmp_path / "h", tmp_path / "c")
    m = json.loads((b / "gato.json").read_text())
    m["precision"] = "fp32"
    (b / "gato.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"input 'patches' is float16 .* implies float32"):
        RuntimePolicy.load(b)
    m["precision"] = "bf16"
    (b / "gato.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="gato.json: unknown precision 'bf16'"):
        Bundle.load(b)


def test_instruction_conditioned_bundle_matches_torch_and_reads_the_instruction(tmp_path):
    """A patch embedding FiLM-conditioned on the instruction, layer-normalised, with CoordConv channels: the prefill
    graph takes the instruction features as an input; runtime == torch; another instruction changes the actions."""
    torch.manual_seed(1)
    cfg = preset("gato-tiny", instruction_features=32, patch_norm=True, patch_coords=True)
    model = GatoModel(cfg)
    with torch.no_grad():
        model.head.weight.mul_(40.0)
        model.embed.patch.film.weight.normal_(0.0, 1.0)
    norm = ActionNormalizer("delta", -0.05 * np.ones(7), 0.05 * np.ones(7))
    ckpt = {"model": model.state_dict(), "config": cfg.to_dict(), "normalizer": norm.to_dict()}
    meta = export_checkpoint(ckpt, tmp_path / "film")
    assert "text_feat" in meta["graphs"]["prefill"]["inputs"] and "text_feat" not in meta["graphs"]["decode"]["inputs"]
    assert meta["export_check"]["rollout"]["max_abs_logit_diff"] <= 1e-4
    tok = GatoTokenizer(cfg.tokenizer)
    obs = random_episode(cfg, 8, seed=5)
    policy = RuntimePolicy.load(tmp_path / "film", execution_provider="cpu")
    runs = {}
    for text in ("reach the red cube", "reach the blue cube"):
        policy.set_instruction(text)
        policy.trace = []
        chosen = np.stack([policy.act_tokens(tok.tokenize_steps({k: v[t:t + 1] for k, v in obs.items()}, None,
                                                                cfg.spec)) for t in range(8)])
        want = torch_action_logits(model.eval(), text, obs, chosen)
        np.testing.assert_array_equal(np.argmax(want, -1) + tok.bin_offset, chosen)
        assert np.max(np.abs(np.stack(policy.trace).reshape(want.shape) - want)) <= 1e-4
        runs[text] = chosen
    assert not np.array_equal(*runs.values())


def test_upgrade_reexports_an_old_format_bundle_and_keeps_its_records(bundle, tmp_path):
    """A bundle written by an older version (format 1: dense-patch graphs) is refused with the command that mends
    it; `gato-ros export --upgrade` writes new graphs from its model.pt and keeps its evaluation records, model card
    and pictures."""
    src, _, _ = bundle
    old = tmp_path / "old"
    shutil.copytree(src, old)
    meta = json.loads((old / "gato.json").read_text())
    meta["format"] = "gato_ros.bundle/1"
    meta["eval"] = {"reach": {"success_rate": 0.99, "episodes": 100}}
    (old / "gato.json").write_text(json.dumps(meta))
    (old / "prefill.onnx").write_bytes(b"an old graph")  # replaced without being read
    (old / "README.md").write_text("# hand-written card\n")
    (old / "loss.png").write_bytes(b"png")
    with pytest.raises(BundleError, match="gato_ros.bundle/1.*gato-ros export --upgrade"):
        Bundle.load(old)
    r = subprocess.run([sys.executable, "-m", "gato_ros.cli", "export", "--upgrade", str(old), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["export_check"]["rollout"]["tokens_equal"]
    new = json.loads((old / "gato.json").read_text())
    assert new["format"] == "gato_ros.bundle/2" and new["eval"] == meta["eval"]
    assert new["provenance"]["graphs_reexported"]["from_format"] == "gato_ros.bundle/1"
    assert new["provenance"]["git_commit"] == "test"
    assert (old / "README.md").read_text() == "# hand-written card\n" and (old / "loss.png").read_bytes() == b"png"
    assert not list(old.glob(".*.new"))
    policy = RuntimePolicy.load(old, execution_provider="cpu", threads=1)
    policy.set_instruction("pick up the red cube")
    obs = random_episode(policy.cfg, 1, 0)
    assert policy.act({k: v[0] for k, v in obs.items()}).shape == (7,)
    r = subprocess.run([sys.executable, "-m", "gato_ros.cli", "export", "--upgrade", str(old), "--out", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--upgrade BUNDLE takes no" in r.stderr


def test_export_does_not_replace_a_bundle_holding_records_without_force(bundle, tmp_path):
    """Exporting over a bundle an export wrote (nothing added) replaces it; over one holding evaluation records, a
    hand-written card or other files it stops (exit 1) and names them, unless --force."""
    src, _, _ = bundle
    out = tmp_path / "mine"
    shutil.copytree(src, out)
    cmd = [sys.executable, "-m", "gato_ros.cli", "export", "--checkpoint", str(src / "model.pt"), "--out", str(out),
           "--rollout-steps", "2", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (out / "loss.png").write_bytes(b"png")
    meta = json.loads((out / "gato.json").read_text())
    meta["eval"] = {"reach": {"success_rate": 0.5}}
    (out / "gato.json").write_text(json.dumps(meta))
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1
    assert "loss.png" in r.stderr and "evaluation records" in r.stderr and "--upgrade" in r.stderr, r.stderr
    assert (out / "loss.png").exists() and json.loads((out / "gato.json").read_text())["eval"]
    r = subprocess.run(cmd + ["--force"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (out / "loss.png").exists() and not json.loads((out / "gato.json").read_text())["eval"]
