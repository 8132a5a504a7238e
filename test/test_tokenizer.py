"""Tokenizer: exactness against the Gato paper's definitions, ranges, layout and bad input."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gato_ros.tokenizer import (
    ACTION,
    BYTE_BOS,
    BYTE_EOS,
    CONTINUOUS,
    IMAGE,
    SEPARATOR,
    TEXT,
    GatoTokenizer,
    TimestepSpec,
    TokenizerConfig,
)

TOK = GatoTokenizer()
C = TOK.config
BIN = 2.0 / C.num_bins  # bin width in companded space


def test_defaults_are_the_papers():
    assert (C.text_vocab_size, C.num_bins, C.mu, C.M, C.patch_size) == (32000, 1024, 100.0, 256.0, 16)
    assert TOK.separator_token == 32000 + 1024
    assert TOK.vocab_size == 32000 + 1024 + 1


def test_config_json_round_trip():
    cfg = TokenizerConfig(text_vocab_size=300, num_bins=512, mu=50.0, M=128.0, patch_size=8)
    assert TokenizerConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["num_bins"] == 512


@pytest.mark.parametrize(
    "kwargs, field",
    [({"text_vocab_size": 100}, "text_vocab_size"), ({"num_bins": 1}, "num_bins"), ({"mu": 0}, "mu"),
     ({"patch_size": 0}, "patch_size"), ({"text_tokenizer": "spm"}, "text_tokenizer")],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TokenizerConfig(**kwargs)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        TokenizerConfig.from_dict({"num_bins": 1024, "bogus": 1})


def test_mu_law_matches_the_formula():
    x = np.array([-300.0, -1.0, -0.01, 0.0, 0.5, 256.0])
    expected = np.sign(x) * np.log(np.abs(x) * 100.0 + 1.0) / np.log(256.0 * 100.0 + 1.0)
    np.testing.assert_allclose(TOK.mu_law(x), expected, rtol=1e-12)
    np.testing.assert_allclose(TOK.inverse_mu_law(TOK.mu_law(x)), x, rtol=1e-9, atol=1e-12)


SWEEP = np.concatenate(
    [
        [0.0, 1.0, -1.0, 256.0, -256.0, 255.999, -255.999, 1e-9, -1e-9],
        np.linspace(-256, 256, 2001),
        np.geomspace(1e-6, 256, 500),
        -np.geomspace(1e-6, 256, 500),
    ]
)


def test_continuous_round_trip_within_one_bin_in_companded_space():
    tokens = TOK.encode_continuous(SWEEP)
    decoded = TOK.decode_continuous(tokens)
    err = np.abs(TOK.mu_law(decoded) - TOK.mu_law(SWEEP))
    assert err.max() <= BIN / 2 + 1e-12  # bin centres: at most half a bin away


def test_values_beyond_the_clip_limit_saturate():
    far = np.array([1e3, 1e6, -1e3, -1e6])
    tokens = TOK.encode_continuous(far)
    assert tokens.tolist() == [C.text_vocab_size + 1023] * 2 + [C.text_vocab_size] * 2
    assert TOK.encode_continuous(np.array([256.0]))[0] == C.text_vocab_size + 1023  # F(M) = 1: never bin 1024


def test_zero_is_at_the_centre():
    assert TOK.encode_continuous(np.array([0.0]))[0] == C.text_vocab_size + 512
    assert TOK.encode_uniform(np.array([-1.0, 1.0])).tolist() == [C.text_vocab_size, C.text_vocab_size + 1023]


def test_uniform_round_trip():
    x = np.linspace(-1, 1, 4097)
    err = np.abs(TOK.decode_uniform(TOK.encode_uniform(x)) - x)
    assert err.max() <= BIN / 2 + 1e-12


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    with pytest.raises(ValueError, match="non-finite"):
        TOK.encode_continuous(np.array([0.0, bad]), "joint_pos")
    with pytest.raises(ValueError, match="joint_pos"):
        TOK.encode_uniform(np.array([bad]), "joint_pos")


def test_wrong_dtypes_are_rejected():
    with pytest.raises(ValueError, match="expected numbers"):
        TOK.encode_continuous(np.array(["a"]))
    with pytest.raises(ValueError, match="integer"):
        TOK.decode_continuous(np.array([32000.5]))
    with pytest.raises(ValueError, match="bin tokens"):
        TOK.decode_continuous(np.array([5]))
    with pytest.raises(ValueError, match="discrete"):
        TOK.encode_discrete(np.array([1024]))


def test_discrete_values_share_the_bin_range():
    assert TOK.encode_discrete(np.array([0, 7, 1023])).tolist() == [32000, 32007, 33023]


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_tokens_stay_in_the_bin_range(x):
    t = TOK.encode_continuous(x)
    assert t.dtype == np.int64
    assert (t >= C.text_vocab_size).all() and (t < C.text_vocab_size + C.num_bins).all()


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 1e4, allow_nan=False), st.floats(-1e4, 1e4, allow_nan=False))
def test_encoding_is_monotonic(a, b):
    lo, hi = min(a, b), max(a, b)
    t_lo, t_hi = TOK.encode_continuous(np.array([lo, hi]))
    assert t_lo <= t_hi


def test_image_patches_order_and_normalisation():
    # A 32x48 image whose pixel value encodes (patch row, patch col, channel) lets us check raster order exactly.
    img = np.zeros((32, 48, 3), dtype=np.uint8)
    for r in range(2):
        for c in range(3):
            for ch in range(3):
                img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16, ch] = 10 * (r * 3 + c) + ch
    img[0, 1, 0] = 255  # one marker pixel: first patch, row 0, column 1, channel 0
    patches = TOK.image_patches(img)
    assert patches.shape == (6, 16 * 16 * 3) and patches.dtype == np.float32
    for k in range(6):
        vals = patches[k].reshape(16, 16, 3)
        expected = (10 * k + np.arange(3)) / 255.0 * 2 - 1
        if k == 0:
            assert vals[0, 1, 0] == pytest.approx((1.0) / 4)  # 255 -> 1 -> /sqrt(16)
            vals = vals.copy()
            vals[0, 1, 0] = expected[0] / 4
        np.testing.assert_allclose(vals, np.broadcast_to(expected / 4.0, (16, 16, 3)), atol=1e-6)
    assert TOK.image_patches(np.zeros((16, 16, 1), np.uint8)).min() == pytest.approx(-0.25)


def test_image_patches_bad_input():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TOK.image_patches(np.zeros((60, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        TOK.image_patches(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        TOK.image_patches(np.zeros((64, 64), np.uint8))


def test_text_bytes_round_trip_and_truncation():
    ids = TOK.encode_text("put the red cube in the blue bowl")
    assert ids[0] == BYTE_BOS and ids[-1] == BYTE_EOS and (ids < C.text_vocab_size).all()
    assert TOK.decode_text(ids) == "put the red cube in the blue bowl"
    short = TOK.encode_text("reach the green ball", max_tokens=8)
    assert short.size == 8 and short[-1] == BYTE_EOS
    assert TOK.decode_text(TOK.encode_text("grün")) == "grün"
    with pytest.raises(ValueError, match="text"):
        TOK.encode_text(b"bytes")  # type: ignore[arg-type]


def _obs(t=2, rng=np.random.default_rng(0)):
    return {
        "image": rng.integers(0, 256, (t, 64, 64, 3), dtype=np.uint8),
        "joint_vel": rng.normal(size=(t, 7)),
        "joint_pos": rng.normal(size=(t, 7)),
    }


def test_timestep_layout_is_canonical():
    spec = TimestepSpec(text_tokens=4)
    lay = TOK.layout(spec)
    assert lay.length == 4 + 16 + 14 + 1 + 7 and lay.observation_length == 4 + 16 + 14 + 1
    assert lay.kinds.tolist() == [TEXT] * 4 + [IMAGE] * 16 + [CONTINUOUS] * 14 + [SEPARATOR] + [ACTION] * 7
    assert lay.local_pos.tolist() == list(range(35)) + [-1] * 7
    assert lay.slices["joint_pos"] == slice(20, 27) and lay.slices["joint_vel"] == slice(27, 34)  # sorted keys
    assert lay.grid == (4, 4)
    assert lay.patch_row[4:20].tolist() == [r for r in range(4) for _ in range(4)]
    assert lay.patch_col[4:20].tolist() == list(range(4)) * 4
    assert TOK.layout(TimestepSpec(text_tokens=4)) is lay  # cached per spec


def test_tokenize_steps_places_every_modality():
    obs = _obs()
    actions = np.array([[-1, -0.5, 0, 0.25, 0.5, 0.99, 1]] * 2)
    text = TOK.encode_text("reach", max_tokens=7)
    spec = TimestepSpec(text_tokens=7)
    out = TOK.tokenize_steps(obs, actions, spec, text_tokens=text)
    lay = out.layout
    assert out.tokens.shape == (2, lay.length) and out.patches.shape == (2, 16, 768)
    np.testing.assert_array_equal(out.tokens[:, lay.slices["text"]], np.broadcast_to(text, (2, 7)))
    np.testing.assert_array_equal(out.tokens[:, lay.slices["joint_pos"]], TOK.encode_continuous(obs["joint_pos"]))
    np.testing.assert_array_equal(out.tokens[:, lay.slices["joint_vel"]], TOK.encode_continuous(obs["joint_vel"]))
    assert (out.tokens[:, lay.slices["separator"]] == TOK.separator_token).all()
    np.testing.assert_array_equal(out.tokens[:, lay.slices["action"]], TOK.encode_uniform(actions))
    np.testing.assert_array_equal(out.patches[1], TOK.image_patches(obs["image"][1]))
    no_act = TOK.tokenize_steps(obs, None, spec, text_tokens=text)
    assert (no_act.tokens[:, lay.slices["action"]] == TOK.pad_token).all()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda o: o.update(depth=np.zeros((2, 3))), "unknown keys.*depth"),
        (lambda o: o.pop("joint_vel"), "missing keys.*joint_vel"),
        (lambda o: o.update(joint_pos=np.zeros((2, 6))), r"joint_pos.*\(T, 7\)"),
        (lambda o: o.update(joint_pos=np.zeros((3, 7))), "joint_pos.*3 steps"),
        (lambda o: o.update(image=np.zeros((2, 32, 32, 3), np.uint8)), "image.*shape"),
        (lambda o: o.update(image=np.zeros((2, 64, 64, 3), np.float32)), "uint8"),
        (lambda o: o["joint_vel"].__setitem__((1, 2), np.nan), r"joint_vel.*non-finite"),
    ],
)
def test_tokenize_steps_bad_input_names_the_field(mutate, match):
    obs = _obs()
    mutate(obs)
    with pytest.raises(ValueError, match=match):
        TOK.tokenize_steps(obs, None, TimestepSpec())


def test_tokenize_steps_bad_actions_and_text():
    with pytest.raises(ValueError, match="actions"):
        TOK.tokenize_steps(_obs(), np.zeros((2, 6)), TimestepSpec())
    with pytest.raises(ValueError, match="actions.*non-finite"):
        TOK.tokenize_steps(_obs(), np.full((2, 7), np.nan), TimestepSpec())
    with pytest.raises(ValueError, match="text_tokens"):
        TOK.tokenize_steps(_obs(), None, TimestepSpec(text_tokens=3))


def test_spec_round_trips_through_json():
    spec = TimestepSpec(image_shape=(32, 48, 1), continuous={"b": 2, "a": 3}, action_size=4, text_tokens=2)
    again = TimestepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and hash(again) == hash(spec)
    assert again.continuous_keys == ("a", "b")
