"""Model card and success plot from evaluation JSON (the files `gato-ros eval --out` writes)."""
import json

from gato_ros.evaluation import wilson_interval
from gato_ros.report import write_model_card


def _result(policy, reach, pick, n=20):
    tasks = {}
    for task, k in (("reach", reach), ("pick_place", pick)):
        tasks[task] = {"episodes": n, "success_rate": k / n, "ci95": list(wilson_interval(k, n)), "mean_steps": 30.0}
    return {"policy": policy, "tasks": tasks, "tick_ms": {"p50": 4.0, "p99": 9.0}}


def test_model_card_tables_every_policy_and_records_the_bundle_eval(tmp_path):
    run, bundle = tmp_path / "run", tmp_path / "models" / "gato_test"
    (run / "eval").mkdir(parents=True)
    bundle.mkdir(parents=True)
    (bundle / "gato.json").write_text(json.dumps({"name": "gato_test", "eval": {}}))
    (run / "train_config.json").write_text(json.dumps({
        "config": {"name": "gato-arm", "n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 512, "window_steps": 4,
                   "action_mode": "delta"},
        "train_config": {"steps": 10, "batch_size": 2, "lr": 1e-3}, "data": ["d"], "episodes": {"train": 1},
        "git_commit": "abc"}))
    for name, reach, pick in (("gato_test", 17, 9), ("expert", 20, 20), ("random", 0, 0)):
        policy = str(bundle) if name == "gato_test" else name
        (run / "eval" / f"{name}.json").write_text(json.dumps(_result(policy, reach, pick)))
    # The same bundle with a Gato prompt and through the ROS graph: own rows, and not taken as the bundle's eval.
    (run / "eval" / "prompted.json").write_text(json.dumps(dict(_result(str(bundle), 19, 11), prompt={"source": "e"})))
    (run / "eval" / "ros.json").write_text(json.dumps(dict(_result(str(bundle), 16, 8), transport="ros2")))
    card = write_model_card(run, bundle, notes="## Known failure modes\n\nsome").read_text()
    assert "| gato_test | reach | 20 | 85% |" in card and "| random | pick_place | 20 | 0% |" in card
    assert "| gato_test + prompt | reach | 20 | 95% |" in card and "| gato_test (ROS) | pick_place | 20 | 40% |" in card
    assert "Known failure modes" in card
    assert (bundle / "success.png").stat().st_size > 1000
    meta = json.loads((bundle / "gato.json").read_text())
    assert meta["eval"]["tasks"]["reach"]["success_rate"] == 0.85
    assert "Reproduce with `make model`" in card and "wall-clock on the 2-core development machine" in card
    # A run made another way says so: RUN/recipe.md replaces the make-model paragraph, timing names its machine.
    (run / "recipe.md").write_text("Trained on a GPU with scripts/train_gpu.sh.\n")
    (run / "timing.json").write_text(json.dumps({"machine": "one H200", "train_s": 600}))
    card = write_model_card(run, bundle).read_text()
    assert "Trained on a GPU with scripts/train_gpu.sh." in card and "make model" not in card
    assert 'wall-clock on one H200: {"train_s": 600}' in card
