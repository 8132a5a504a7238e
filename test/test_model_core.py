"""Model, config and context-layout unit tests (torch, no ONNX): fast tier."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gato_ros.model.config import GatoConfig, preset
from gato_ros.model.data import EpisodeSequences, check_episodes, fit_normalizer, synthetic_episodes
from gato_ros.model.model import GatoModel
from gato_ros.sequence import ActionNormalizer, patch_position_bins, rope_full, rope_tables


def test_presets_sizes():
    c79 = preset("gato-79m")
    n = c79.num_parameters()
    assert 75e6 < n["embedding"] + n["blocks"] < 85e6  # Gato Table 1: 79M
    small = preset("gato-small")
    assert small.step_tokens == 38 and small.observation_tokens == 31
    assert small.ring_slots == small.window_steps * 38


@pytest.mark.parametrize("field,value", [("d_model", 250), ("window_steps", 1), ("action_mode", "mu"),
                                         ("n_layers", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        preset("gato-small", **{field: value})


def test_config_round_trip():
    cfg = preset("gato-tiny")
    assert GatoConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        GatoConfig.from_dict(dict(cfg.to_dict(), bogus=1))


@pytest.mark.parametrize("mode", ["delta", "absolute"])
def test_action_normalizer_round_trip(mode):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 7))
    a = q + rng.normal(scale=0.05, size=(50, 7))
    norm = ActionNormalizer.fit([a], [q], mode)
    x = norm.normalize(a, q)
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(norm.denormalize(x, q), a, atol=1e-12)
    assert ActionNormalizer.from_dict(norm.to_dict()).to_dict() == norm.to_dict()


def test_rope_tables_exact_at_large_positions():
    cos, sin = rope_tables(np.array([0, 10**6]), 32, 10000.0)
    assert cos.dtype == np.float32 and cos.shape == (2, 16)
    np.testing.assert_allclose(cos[1, 0], np.cos(10**6), atol=1e-7)


def test_patch_bins_inference_is_interval_mean_and_training_stays_inside():
    r, c = patch_position_bins(np.arange(4), np.arange(4), (4, 4), 128)
    assert r.tolist() == [15, 47, 79, 111]
    rng = np.random.default_rng(0)
    for _ in range(20):
        rr, _ = patch_position_bins(np.arange(4), np.arange(4), (4, 4), 128, rng)
        assert np.all(rr // 32 == np.arange(4))


def test_mixed_layouts_and_empty_data_named():
    eps = synthetic_episodes(3, 5)
    eps[2].observations["image"] = eps[2].observations["image"][:, :32, :32]
    with pytest.raises(ValueError, match="episode 2"):
        check_episodes(eps)
    with pytest.raises(ValueError, match="empty"):
        check_episodes([])


def _tiny(**overrides):
    torch.manual_seed(0)
    cfg = preset("gato-tiny", **overrides)
    return cfg, GatoModel(cfg).eval()


@pytest.mark.parametrize("coords", [False, True])
def test_cached_forward_equals_full_forward(coords):
    """Incremental calls over the prefix + ring cache (the exported function) reproduce the full-context
    forward with the sliding-window mask, here over an episode that wraps the ring twice. With coordinate channels
    the exported function takes their share of the patch stem from a per-cell table, the training forward from
    concatenated planes: the same logits."""
    eps = synthetic_episodes(1, preset("gato-tiny").window_steps + 3)  # the ring wraps
    spec = check_episodes(eps)
    cfg, model = _tiny(spec=spec, patch_coords=True, pos_bins=4) if coords else _tiny()
    if coords:
        with torch.no_grad():  # a stem that reads the coordinate planes (random weights do anyway; make it count)
            model.embed.patch.stem.weight[:, -2:] *= 10.0
    norm = fit_normalizer(eps, cfg.action_mode)
    data = EpisodeSequences(eps, cfg, norm)
    T = len(eps[0].actions)
    steps = data.tokens(0, 0, T)
    ctx = data.builder
    full = ctx.build(ctx.text_ids(eps[0].instruction), steps, 0)
    with torch.no_grad():
        want = model({k: torch.from_numpy(v)[None] for k, v in full.items()})[0]  # (L, nb)
    H, Dh, P, R, L = cfg.n_heads, cfg.head_dim, cfg.prefix_slots, cfg.ring_slots, cfg.n_layers
    C = P + R
    cache = [torch.zeros(s) for _ in range(L) for s in ((H, Dh, P), (H, Dh, R), (H, C, Dh))]
    visible = torch.full((C,), float("-inf"))  # prefix part
    ring_step = torch.full((R,), -1)
    patch_of = np.cumsum(full["is_image"]) - 1  # position -> its row of the context's compact patches
    n = int(full["is_prefix"].sum())
    # Prefix call, then one call per token of the episode (decode-like, the strictest case).
    order = [np.arange(n)] + [np.array([i]) for i in range(P, len(full["tokens"]))]
    for idx in order:
        img = full["is_image"][idx]
        emb = ctx.embed_inputs(full["patches"][patch_of[idx][img]], img, full["row_bin"][idx], full["col_bin"][idx])
        feeds = [torch.from_numpy(a) for a in (full["tokens"][idx], emb["patches"], emb["patch_row_bin"],
                                               emb["patch_col_bin"], emb["embed_index"], full["local_pos"][idx],
                                               full["prefix_pos"][idx])]
        cos, sin = (torch.from_numpy(a) for a in rope_full(full["rope_cos"][idx], full["rope_sin"][idx]))
        T_new = len(idx)
        is_prefix = bool(full["is_prefix"][idx[0]])
        st = torch.from_numpy(full["step"][idx])
        mask = torch.full((T_new, C + T_new), float("-inf"))
        mask[:, :P] = visible[:P]
        if not is_prefix:
            mask[:, P:C] = torch.where((ring_step[None] >= 0) & (st[:, None] - ring_step[None] < cfg.window_steps),
                                       0.0, float("-inf"))
        mask[:, C:] = torch.triu(torch.full((T_new, T_new), float("-inf")), 1)
        with torch.no_grad():
            logits, k, v = model.forward_cached(*feeds, cos, sin, mask, *cache)
        if is_prefix:
            for layer in range(L):
                cache[3 * layer][:, :, :T_new] = k[layer].transpose(1, 2)
                cache[3 * layer + 2][:, :T_new] = v[layer]
            visible[:T_new] = 0
            continue
        pos = idx[0] - P
        slot = (int(st[0]) % cfg.window_steps) * ctx.S + pos % ctx.S
        for layer in range(L):
            cache[3 * layer + 1][:, :, slot] = k[layer][:, 0]
            cache[3 * layer + 2][:, P + slot] = v[layer][:, 0]
        ring_step[slot] = st[0]
        torch.testing.assert_close(logits[0], want[idx[0]], atol=2e-5, rtol=0)


def test_sliding_window_hides_old_steps():
    """A token's first-layer attention never reaches a timestep outside the window: changing the image of step
    0 must not change the logits of step window+... at layer 1 reach (1-layer model)."""
    cfg = preset("gato-tiny", n_layers=1)
    torch.manual_seed(0)
    model = GatoModel(cfg).eval()
    eps = synthetic_episodes(1, cfg.window_steps + 2)
    norm = fit_normalizer(eps, cfg.action_mode)
    data = EpisodeSequences(eps, cfg, norm)
    ctx = data.builder
    steps = data.tokens(0, 0, cfg.window_steps + 2)
    a = ctx.build(ctx.text_ids("x"), steps, 0)
    steps.patches[0] += 1.0
    b = ctx.build(ctx.text_ids("x"), steps, 0)
    with torch.no_grad():
        la = model({k: torch.from_numpy(v)[None] for k, v in a.items()})[0]
        lb = model({k: torch.from_numpy(v)[None] for k, v in b.items()})[0]
    last = slice(ctx.P + (cfg.window_steps) * ctx.S, None)  # step `window` cannot see step 0
    torch.testing.assert_close(la[last], lb[last])
    assert not torch.allclose(la[ctx.P: ctx.P + ctx.S], lb[ctx.P: ctx.P + ctx.S])


def test_loss_only_on_action_targets():
    cfg, model = _tiny()
    eps = synthetic_episodes(2, 8)
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode))
    b = data.batch(np.random.default_rng(0), 2)
    assert (b["target"] >= 0).sum() == 2 * cfg.window_steps * cfg.spec.action_size
    loss, n = model.loss({k: torch.from_numpy(v) for k, v in b.items()})
    assert int(n) == 2 * cfg.window_steps * 7 and 5.0 < loss.item() < 9.0  # ~ln(1024) at init


def test_decision_weight_counts_the_first_timestep_targets_w_times():
    cfg, model = _tiny()
    eps = synthetic_episodes(3, 10)
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode), prompt_prob=0.0, start_prob=0.5)
    b = {k: torch.from_numpy(v) for k, v in data.batch(np.random.default_rng(1), 8).items()}
    sel = b["target"] >= 0
    first = (b["step"][sel] == 0).float()
    assert 0 < int(first.sum()) < int(sel.sum())  # some windows start at the episode's first step, some not
    model.eval()
    with torch.no_grad():
        each = F.cross_entropy(model.head(model.hidden(b)[sel]).float(), b["target"][sel], reduction="none")
        plain, _ = model.loss(b)
        w4, n = model.loss(b, decision_weight=4.0)
    w = 1.0 + 3.0 * first
    assert abs(plain.item() - each.mean().item()) < 1e-5
    assert abs(w4.item() - ((w * each).sum() / w.sum()).item()) < 1e-5 and int(n) == int(sel.sum())
    assert abs(w4.item() - plain.item()) > 1e-4


def test_goal_loss_reads_the_layout_and_trains_the_goal_head_and_the_transformer():
    from gato_ros.model.data import GOAL_BINS, episode_goal

    # episode_goal: target then receptacle xy as bins over the table; unknown parts masked
    class Ep:
        meta = {"layout": {"target": "cube_0", "receptacle": "bowl_1",
                           "objects": [{"body": "cube_0", "xy": [0.45, 0.0]}, {"body": "bowl_1", "xy": [0.9, -0.6]}]}}
    bins, known = episode_goal(Ep)
    assert bins.tolist() == [32, 32, GOAL_BINS - 1, 0] and known.tolist() == [1, 1, 1, 1]
    Ep.meta = {"layout": {"target": "cube_0", "receptacle": None, "objects": Ep.meta["layout"]["objects"]}}
    assert episode_goal(Ep)[1].tolist() == [1, 1, 0, 0]
    Ep.meta = {}
    assert episode_goal(Ep)[1].tolist() == [0, 0, 0, 0]

    cfg, model = _tiny()
    model.add_goal_head()
    eps = synthetic_episodes(3, 10)  # their meta has a layout: the square is the target
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode), prompt_prob=0.0, goals=True)
    b = {k: torch.from_numpy(v) for k, v in data.batch(np.random.default_rng(1), 4).items()}
    assert b["goal_bin"].shape == (4, 4) and b["goal_mask"][:, :2].eq(1).all() and b["goal_mask"][:, 2:].eq(0).all()
    plain, n0 = model.loss(b)
    total, n = model.loss(b, goal_weight=0.5)
    goal = model.last_losses["goal"]
    assert int(n) == int(n0) and abs(model.last_losses["action"].item() - plain.item()) < 1e-5
    assert abs(total.item() - (plain.item() + 0.5 * goal.item())) < 1e-4 and 3.0 < goal.item() < 6.0  # ~ln(64)
    total.backward()
    assert model.goal_head.weight.grad.abs().sum() > 0 and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # only the known coordinates count: with none known the goal term is zero
    b["goal_mask"].zero_()
    model.loss(b, goal_weight=0.5)
    assert model.last_losses["goal"].item() == 0.0


def test_instruction_features_hash_words_and_roles():
    from gato_ros.sequence import instruction_features

    a = instruction_features("put the yellow cube in the red bowl", 256)
    assert a.dtype == np.float32 and a.shape == (256,) and set(np.unique(a)) == {0.0, 1.0}
    np.testing.assert_array_equal(a, instruction_features("Put the YELLOW cube, in the red bowl.", 256))
    swapped = instruction_features("put the red cube in the yellow bowl", 256)  # same words, other roles
    assert not np.array_equal(a, swapped)
    assert not np.array_equal(instruction_features("reach the red cube", 256),
                              instruction_features("reach the blue cube", 256))
    assert instruction_features("anything", 0).shape == (0,)


def _film_model():
    torch.manual_seed(0)
    eps = synthetic_episodes(4, 8)
    cfg = preset("gato-tiny", spec=check_episodes(eps), instruction_features=64)
    return cfg, GatoModel(cfg).eval(), eps


def test_instruction_film_starts_as_identity_then_conditions_the_patches():
    cfg, model, eps = _film_model()
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode))
    b = {k: torch.from_numpy(v) for k, v in data.batch(np.random.default_rng(0), 3).items()}
    assert b["text_feat"].shape == (3, 64) and bool(b["text_feat"].any())
    other = dict(b, text_feat=torch.roll(b["text_feat"], 5, dims=-1))
    with torch.no_grad():
        torch.testing.assert_close(model(b), model(other), rtol=0, atol=0)  # zero-initialised FiLM: no effect
        model.embed.patch.film.weight.normal_(0.0, 0.5)
        assert (model(b) - model(other)).abs().max() > 1e-3  # the instruction now reaches every patch
    loss, _ = model.loss(b)  # and the batch path trains through it
    loss.backward()
    assert model.embed.patch.film.weight.grad.abs().sum() > 0


def test_film_model_needs_instruction_features_in_contexts():
    cfg, _, eps = _film_model()
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode))
    with pytest.raises(ValueError, match="text_feat"):
        data.builder.build(data.builder.text_ids("x"), data.tokens(0, 0, 2), 0)


def test_prompts_are_drawn_per_batch_so_unprompted_batches_drop_the_prompt_slots():
    cfg, model = _tiny()
    eps = synthetic_episodes(4, 8)
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode), prompt_prob=0.5)
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(12):
        b = data.batch(rng, 4)
        prompted = b["is_prefix"].sum(1) > b["is_prefix"][:, :cfg.max_text_tokens].sum(1)  # prefix beyond the text
        assert prompted.all() or not prompted.any()
        kinds.add(bool(prompted[0]))
        if not prompted[0]:
            assert b["tokens"].shape[1] < cfg.context_tokens  # padding-only prompt slots compacted away
    assert kinds == {True, False}


def test_start_prob_draws_windows_at_the_episode_start():
    cfg, _ = _tiny()
    eps = synthetic_episodes(4, 12)
    norm = fit_normalizer(eps, cfg.action_mode)
    rng = np.random.default_rng(3)
    always = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0, start_prob=1.0)
    assert {always.draw(rng).start for _ in range(50)} == {0}
    uniform = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0)
    starts = [uniform.draw(rng).start for _ in range(400)]
    assert 0 < starts.count(0) < 100 and max(starts) == 12 - cfg.window_steps  # 1 in 9 starts by chance
    half = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0, start_prob=0.5)
    assert 150 < [half.draw(rng).start for _ in range(400)].count(0) < 300
    with pytest.raises(ValueError, match="start_prob"):
        EpisodeSequences(eps, cfg, norm, start_prob=1.5)


def test_turn_prob_draws_windows_that_hold_the_sharpest_turn():
    from gato_ros.model.data import SyntheticEpisode, sharpest_turn

    cfg, _ = _tiny()
    eps = synthetic_episodes(4, 20)
    for ep in eps:  # the arm moves +x for 10 steps, then turns to -x at step 10
        q = np.zeros((20, 7))
        q[1:, 0] = np.cumsum(np.where(np.arange(19) < 10, 0.05, -0.05))
        a = q.copy()
        a[:-1, 0] = q[1:, 0]
        a[-1, 0] = q[-1, 0] - 0.05
        ep.observations["joint_pos"] = q
        ep.actions = a
    assert [sharpest_turn(ep) for ep in eps] == [10] * 4
    assert sharpest_turn(SyntheticEpisode({"joint_pos": np.zeros((1, 7))}, np.zeros((1, 7)), "x", "t")) == 0
    norm = fit_normalizer(eps, cfg.action_mode)
    data = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0, turn_prob=1.0)
    rng = np.random.default_rng(0)
    starts = {data.draw(rng).start for _ in range(200)}
    assert starts == {10 - k for k in range(cfg.window_steps)}  # the turn at every position of the window
    mixed = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0, start_prob=0.5, turn_prob=0.5)
    starts = [mixed.draw(rng).start for _ in range(400)]
    assert 150 < starts.count(0) < 250 and set(starts) == {0, 8, 9, 10}
    with pytest.raises(ValueError, match="turn_prob"):
        EpisodeSequences(eps, cfg, norm, start_prob=0.6, turn_prob=0.6)


def test_task_share_sets_each_tasks_share_of_the_draws():
    from gato_ros.model.data import task_weights

    # 2 short new-task episodes beside 8 long replay episodes of two tasks: by windows the new task gets 2%.
    tasks = ["new", "new", "old", "old", "old", "old", "reach", "reach", "reach", "reach"]
    lengths = np.array([6, 12, 30, 30, 30, 30, 13, 13, 13, 13])
    w = task_weights(tasks, lengths, 4)
    assert w[:2].sum() == pytest.approx(12 / (12 + 4 * 27 + 4 * 10))
    w = task_weights(tasks, lengths, 4, {"new": 0.5})
    assert w[:2].sum() == pytest.approx(0.5) and w[1] / w[0] == pytest.approx(9 / 3)  # windows within the task
    assert w[2:6].sum() / w[6:].sum() == pytest.approx(27 / 10)  # the rest by windows, as before
    w = task_weights(tasks, lengths, 4, {"new": 0.2, "old": 0.3, "reach": 0.5})
    assert [w[:2].sum(), w[2:6].sum(), w[6:].sum()] == pytest.approx([0.2, 0.3, 0.5])
    for bad, msg in (({"pick": 0.5}, "no episode of that task"), ({"new": 0.0}, "must lie in"),
                     ({"new": 0.6, "old": 0.4}, "summing to less than 1"), ({"new": 1.0, "old": 0.5}, "must lie")):
        with pytest.raises(ValueError, match=msg):
            task_weights(tasks, lengths, 4, bad)

    cfg, _ = _tiny()
    eps = synthetic_episodes(10, 12)
    for i, ep in enumerate(eps):
        ep.task = "new" if i < 2 else "old"
    data = EpisodeSequences(eps, cfg, fit_normalizer(eps, cfg.action_mode), prompt_prob=0.0, task_share={"new": 0.5})
    rng = np.random.default_rng(0)
    assert 150 < sum(data.draw(rng).episode < 2 for _ in range(400)) < 250


def test_grounding_report_scores_true_against_swapped_instruction_and_image():
    from gato_ros.model.grounding import grounding_report, swap_colour

    assert swap_colour("reach the red cube") == "reach the green cube"
    assert swap_colour("put the yellow cube in the red bowl", 2) == "put the green cube in the red bowl"
    assert swap_colour("point at it") is None
    torch.manual_seed(2)
    eps = synthetic_episodes(6, 8)  # "reach red goal" / "reach blue goal", the goal drawn in the image
    cfg = preset("gato-tiny", spec=check_episodes(eps), instruction_features=32)
    model = GatoModel(cfg).eval()
    with torch.no_grad():
        model.embed.patch.film.weight.normal_(0.0, 1.0)
    rep = grounding_report(model, fit_normalizer(eps, cfg.action_mode), eps, start=0)
    assert rep["episodes"] == 6 and rep["episodes_with_colour_word"] == 6
    for name in ("true", "other_colour", "other_image"):
        assert len(rep[name]["first_step_bin_error_per_joint"]) == 7 and np.isfinite(rep[name]["label_logprob"])
    # an untrained model is not grounded, but it does read both inputs: the scores move
    assert rep["other_colour"]["label_logprob"] != rep["true"]["label_logprob"]
    assert rep["other_image"]["label_logprob"] != rep["true"]["label_logprob"]
    with pytest.raises(ValueError, match="at least 2 episodes"):
        grounding_report(model, fit_normalizer(eps, cfg.action_mode), eps, start=7)


def test_grounding_toy_runs_and_names_one_of_two_squares(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "sim" / "tools" / "grounding_toy.py"
    spec = importlib.util.spec_from_file_location("grounding_toy", path)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    eps = toy.toy_episodes(20, 2, np.random.default_rng(0))
    for ep in eps:  # the first action turns joint 0 towards the named square's side, and only joint 0
        colour = ep.instruction.split()[2]
        rgb = np.array(toy.COLOURS[colour], np.uint8)
        x = int(np.flatnonzero((ep.observations["image"][0, 24] == rgb).all(-1))[0])
        assert np.sign(ep.actions[0, 0]) == (1.0 if x >= 32 else -1.0) and not ep.actions[0, 1:].any()
    assert {ep.instruction for ep in eps} == {"reach the red goal", "reach the blue goal"}
    assert toy.main(["--steps", "2"]) == 0
    assert "first-step joint-0 error" in capsys.readouterr().out


def test_shift_images_moves_content_and_repeats_the_edges():
    from gato_ros.model.data import shift_images

    imgs = np.arange(2 * 5 * 6 * 3, dtype=np.uint8).reshape(2, 5, 6, 3)
    assert shift_images(imgs, 0, 0) is imgs
    out = shift_images(imgs, 2, -1)  # down 2, left 1
    assert out.shape == imgs.shape
    assert np.array_equal(out[:, 2:, :-1], imgs[:, :-2, 1:])  # content moved
    assert np.array_equal(out[:, 0], out[:, 2]) and np.array_equal(out[:, :, -1], out[:, :, -2])  # edges repeated
    with pytest.raises(ValueError, match="does not fit"):
        shift_images(imgs, 5, 0)


def test_image_shift_moves_training_windows_only():
    from gato_ros.model.data import shift_images

    cfg, _ = _tiny()
    eps = synthetic_episodes(3, 10)
    norm = fit_normalizer(eps, cfg.action_mode)
    plain = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0)
    shifted = EpisodeSequences(eps, cfg, norm, prompt_prob=0.0, image_shift=3)
    s = plain.draw(np.random.default_rng(0))
    # Validation contexts (no generator) are never shifted; without image_shift training ones are not either.
    assert np.array_equal(shifted.context(s, None)["patches"], plain.context(s, None)["patches"])
    assert np.array_equal(plain.context(s, np.random.default_rng(1))["patches"], plain.context(s, None)["patches"])
    moved = 0
    for seed in range(8):  # each training window: its images moved by one offset drawn in [-3, 3]
        dy, dx = np.random.default_rng(seed).integers(-3, 4, size=2)
        got = shifted.context(s, np.random.default_rng(seed))["patches"]
        ep, n = eps[s.episode], cfg.window_steps
        obs = {k: np.asarray(v[s.start:s.start + n]) for k, v in ep.observations.items()}
        obs["image"] = shift_images(obs["image"], int(dy), int(dx))
        want = shifted.tok.tokenize_steps(obs, norm.normalize(np.asarray(ep.actions[s.start:s.start + n]),
                                                              obs["joint_pos"]), cfg.spec).patches
        assert np.array_equal(got, want.reshape(got.shape))
        moved += (dy, dx) != (0, 0) and not np.array_equal(got, plain.context(s, None)["patches"])
    assert moved >= 6
    with pytest.raises(ValueError, match="image_shift"):
        EpisodeSequences(eps, cfg, norm, image_shift=-1)


def test_split_by_task_keeps_every_task_in_training():
    from gato_ros.model.data import split_episodes

    tasks = ["point_above"] * 50 + ["reach"] * 50 + ["pick_place"] * 3 + ["lone"]
    train, val = split_episodes(len(tasks), 0.1, 0, tasks)
    assert sorted(train + val) == list(range(len(tasks))) and not set(train) & set(val)
    held = [tasks[i] for i in val]
    assert held.count("point_above") == held.count("reach") == 5 and "lone" not in held
    assert {tasks[i] for i in train} == set(tasks)  # a task of 1 (or a share rounded away) stays in training
    # at least one validation episode even when every task rounds to none
    train, val = split_episodes(4, 0.01, 0, ["a", "a", "b", "c"])
    assert len(val) == 1 and tasks_of(val, ["a", "a", "b", "c"]) == ["a"] and len(train) == 3
    train, val = split_episodes(4, 0.5, 0)  # without tasks: one seeded split over all episodes
    assert len(val) == 2 and sorted(train + val) == [0, 1, 2, 3] and (train, val) == split_episodes(4, 0.5, 0)
    with pytest.raises(ValueError, match="3 task names for 4 episodes"):
        split_episodes(4, 0.5, 0, ["a", "b", "c"])


def tasks_of(idx, tasks):
    return [tasks[i] for i in idx]
