"""The runner's protocol on micro runs of the demo suite: end to end, resume, divergence,
the test-split guard, determinism and bad flags."""
from __future__ import annotations

import math

import mlflow
import optuna
import pytest
import torch

import methods

from bench.run import protocol
from bench.run import spec as spec_mod
from bench.run import study as tune
from bench import steps, tracking, train
from bench.cli import main
from bench.errors import UserError
from bench.identity import Experiment
from bench.run.split_guard import ProtocolError, SplitGuard
from conftest import find_study

TASKS = "digits,count"


def micro_args(out, *extra):
    return ["run", "--methods", "linear,lora", "--tasks", TASKS, "--epochs", "1", "--trials", "2",
            "--seeds", "1,2", "--out", str(out), "--report-dir", str(out / "reports"), "--jobs", "1", *extra]


def final_runs(out, status="FINISHED"):
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    runs = client.search_runs([exp.experiment_id], "tags.phase = 'final'", max_results=1000)
    return [r for r in runs if status is None or r.info.status == status]


def study(out, method, task):
    storage = tune.open_storage(None, out)
    return find_study(storage, method, task)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """One micro run shared by the tests that only read its results."""
    out = tmp_path_factory.mktemp("micro")
    assert main(micro_args(out)) == 0
    return out


def test_micro_run_end_to_end(micro):
    runs = final_runs(micro)
    keys = sorted((r.data.tags["method"], r.data.tags["task"], r.data.tags["seed"]) for r in runs)
    assert keys == sorted((m, t, s) for m in ("linear", "lora") for t in TASKS.split(",") for s in ("1", "2"))
    for r in runs:
        assert 0.0 <= r.data.metrics["test_acc"] <= 100.0
        assert r.data.params["epochs"] == "1"
        assert len(r.data.params["weights_sha256"]) == 64
        assert len(r.data.params["data_sha256"]) == 64
        assert r.data.tags["git_commit"]
        assert r.data.metrics["params_total"] > r.data.metrics["params_backbone"]
    lora = [r for r in runs if r.data.tags["method"] == "lora"]
    assert {r.data.params["rank"] for r in lora} <= {"1", "2", "4", "8", "16", "32", "64"}
    for method in ("linear", "lora"):
        for task in TASKS.split(","):
            trials = study(micro, method, task).trials
            assert len(trials) == 2
            assert trials[0].params["lr"] == tune.COMMON_DEFAULTS["lr"]  # first trial = defaults
    assert (micro / "reports" / "demo.md").is_file()


def test_rerun_skips_everything_done(micro, capsys):
    before = {r.info.run_id for r in final_runs(micro)}
    assert main(micro_args(micro)) == 0
    assert {r.info.run_id for r in final_runs(micro)} == before
    for method in ("linear", "lora"):
        assert len(study(micro, method, "digits").trials) == 2
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith(("tune ", "final "))]  # nothing ran again


def test_interrupted_run_resumes_without_doing_a_final_twice(tmp_path, monkeypatch):
    real_fit = train.fit
    calls = {"final": 0}

    def flaky_fit(model, train_ds, cfg, eval_ds=None, eval_every_epoch=False, on_epoch=None):
        if not eval_every_epoch:  # a final fit
            calls["final"] += 1
            if calls["final"] == 3:
                raise KeyboardInterrupt
        return real_fit(model, train_ds, cfg, eval_ds, eval_every_epoch, on_epoch)

    monkeypatch.setattr(train, "fit", flaky_fit)
    assert main(micro_args(tmp_path)) == 130
    assert len(final_runs(tmp_path)) == 2
    assert len(final_runs(tmp_path, status="KILLED")) == 1

    monkeypatch.setattr(train, "fit", real_fit)
    assert main(micro_args(tmp_path)) == 0
    finished = final_runs(tmp_path)
    keys = [r.data.tags["run_key"] for r in finished]
    assert len(keys) == 8 and len(set(keys)) == 8


def test_diverging_trial_is_pruned_with_reason_and_the_run_goes_on(tmp_path, monkeypatch):
    real_ce = steps.F.cross_entropy  # the loss of bench.steps.train_step
    state = {"calls": 0}

    def nan_once(logits, y):
        state["calls"] += 1
        loss = real_ce(logits, y)
        return loss * float("nan") if state["calls"] == 1 else loss

    monkeypatch.setattr(steps.F, "cross_entropy", nan_once)
    args = ["run", "--methods", "lora", "--tasks", "digits", "--epochs", "1", "--trials", "2", "--seeds", "1",
            "--out", str(tmp_path), "--no-report", "--jobs", "1"]
    assert main(args) == 0
    trials = study(tmp_path, "lora", "digits").trials
    assert trials[0].state == optuna.trial.TrialState.PRUNED
    assert "diverged" in trials[0].user_attrs["failure_reason"]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE
    client = mlflow.MlflowClient(tracking.default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("peft-bench/demo")
    failed = client.search_runs([exp.experiment_id], "tags.phase = 'trial' and tags.trial_state = 'DIVERGED'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "loss is nan" in failed[0].data.tags["failure_reason"]
    assert len(final_runs(tmp_path)) == 1


def test_test_split_is_never_opened_before_the_final_fit(tmp_path, monkeypatch):
    import bench.data

    opened = []
    real_open = bench.data.open_split

    def recording_open(suite, task, split, **kw):
        opened.append((task, split))
        return real_open(suite, task, split, **kw)

    monkeypatch.setattr(bench.data, "open_split", recording_open)
    assert main(["run", "--methods", "lora", "--tasks", "digits", "--epochs", "1", "--trials", "2",
                 "--seeds", "1", "--out", str(tmp_path), "--no-report", "--jobs", "1"]) == 0
    splits = [s for _, s in opened]
    first_test = splits.index("test")
    assert set(splits[:first_test]) <= {"train800", "val200", "train800val200"}
    assert "train800val200" in splits and splits.index("train800val200") < first_test
    assert set(splits[:splits.index("train800val200")]) == {"train800", "val200"}


def test_split_guard_refuses_test_outside_final(tmp_path):
    args = spec_mod.build_spec(spec_mod.RunRequest(methods="lora", tasks="digits", trials=1, epochs=1,
                                                   device="cpu", out=str(tmp_path)))
    guard = SplitGuard(args)
    with pytest.raises(ProtocolError):
        guard.open("digits", "test")
    guard.phase = "final"
    assert len(guard.open("digits", "test")) > 0


def test_same_seed_same_numbers_on_cpu():
    import methods
    from bench.backbones import create_backbone
    from bench.data import open_split

    ds = open_split("demo", "digits", "val200")
    results = []
    for _ in range(2):
        train.seed_everything(3)
        model = methods.get("lora").apply(create_backbone("demo"), num_classes=10)
        cfg = train.TrainConfig(epochs=1, batch_size=32, lr=1e-3, weight_decay=1e-4, seed=3)
        r = train.fit(model, ds, cfg, eval_ds=ds)
        results.append((r.history[0]["train_loss"], r.eval_acc))
    assert results[0] == results[1]
    assert math.isfinite(results[0][0])


def test_linear_probe_trains_on_cached_features(monkeypatch):
    import methods
    from bench.backbones import create_backbone
    from bench.data import open_split

    ds = open_split("demo", "digits", "val200")
    model = methods.get("linear").apply(create_backbone("demo"), num_classes=10)
    backbone_calls = {"n": 0}
    real = model.forward_features

    def counting(x):
        backbone_calls["n"] += 1
        return real(x)

    monkeypatch.setattr(model, "forward_features", counting)
    cfg = train.TrainConfig(epochs=3, batch_size=32, lr=1e-2, weight_decay=0.0, seed=0)
    train.fit(model, ds, cfg, eval_ds=ds, eval_every_epoch=True)
    # one pass over the train split and one over the eval split (batches of 4 x 32), not one per epoch
    assert backbone_calls["n"] == 2 * math.ceil(len(ds) / 128)


@pytest.mark.parametrize("argv, needle", [
    (["run", "--methods", "nope"], "unknown method 'nope'"),
    (["run", "--suite", "imagenet"], "unknown suite 'imagenet'"),
    (["run", "--tasks", "nope"], "unknown task 'nope'"),
    (["run", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["run", "--seeds", "1,1"], "--seeds must list distinct integers"),
    (["run", "--epochs", "0"], "--epochs must be >= 1"),
    (["run", "--suite", "vtab1k"], "pass --data-root"),
    (["run", "--suite", "vtab1k", "--data-root", "/does/not/exist"], "does not exist"),
    (["run", "--pretrained", "/no/such/weights.npz"], "pretrained weights file not found"),
    (["run", "--tracking-uri", "not a uri"], "malformed --tracking-uri"),
    (["run", "--device", "tpu"], "unknown device"),
    (["run", "--jobs", "0"], "--jobs must be >= 1"),
    (["run", "--jobs", "many"], "--jobs must be 'auto' or a positive integer"),
    (["run", "--jobs", "2", "--force"], "--force redoes finished work and runs in one worker"),
    (["run", "--hparam", "rank=4"], "--hparam takes METHOD.NAME=VALUE"),
    (["run", "--methods", "lora", "--hparam", "vpt.mode=shallow"], "method 'vpt' is not among --methods"),
    (["run", "--hparam", "lora.rank=big"], "rank must be an integer >= 1, got 'big'"),
    (["run", "--hparam", "lora.rank=0.5"], "rank must be an integer >= 1, got 0.5"),
    (["run", "--suite", "vtab1k", "--data-root", "."], "pass --pretrained FILE (or --pretrained none"),
    (["run", "--hparam", "vpt.mode=sideways"], "mode must be one of"),
    (["run", "--hparam", "lora.rank=0"], "rank"),
    (["run", "--bogus-flag"], "unrecognized arguments"),
    (["tune", "--method", "lora", "--task", "nope"], "unknown task 'nope'"),
    # issue 14: the backbone is checked with the flags, before anything is built or written
    (["run", "--backbone", "vit_gigantic"], "unknown backbone 'vit_gigantic'; known: demo, vit_base_patch16_224, "),
    (["run", "--suite", "vtab1k", "--backbone", "swin_base_patch4_window7_224", "--methods", "lora,vpt"],
     "method vpt does not run on swin_base_patch4_window7_224 (swin family): VPT's Swin variant"),
    (["tune", "--suite", "vtab1k", "--backbone", "swin_base_patch4_window7_224", "--method", "vpt",
      "--task", "cifar"], "method vpt does not run on swin_base_patch4_window7_224"),
    (["run", "--backbone", "vit_large_patch16_224"], "backbone vit_large_patch16_224 runs on 224px images; suite "
                                                     "demo's are 32px"),
    (["run", "--suite", "vtab1k", "--backbone", "vit_large_patch16_224", "--data-root", "."],
     "pass --pretrained FILE (or --pretrained none to train a randomly initialised backbone on purpose); "
     "vit_large_patch16_224 reads ViT-L_16.npz"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)] if argv[-1] != "--bogus-flag" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cuda_request_without_gpu_is_a_user_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["run", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_checkpointed_fit_resumes_mid_run_with_the_same_numbers(tmp_path):
    import methods
    from bench.backbones import create_backbone
    from bench.data import open_split

    ds = open_split("demo", "count", "val200")
    backbone = create_backbone("demo")

    def run(checkpoint=None, stop_after_first_epoch=False):
        train.seed_everything(5)
        model = methods.get("lora").apply(backbone, num_classes=6)
        cfg = train.TrainConfig(epochs=3, batch_size=32, lr=3e-3, weight_decay=1e-4, warmup_epochs=1, seed=5,
                                checkpoint=checkpoint)

        def stop(epoch, metrics):
            if stop_after_first_epoch:
                raise KeyboardInterrupt

        return train.fit(model, ds, cfg, eval_ds=ds, on_epoch=stop)

    straight = run()
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        run(str(ckpt), stop_after_first_epoch=True)
    assert ckpt.is_file()
    resumed = run(str(ckpt))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.eval_acc == straight.eval_acc
    assert not ckpt.exists()  # removed once the fit is complete


def _garbage_weights(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a weights file")
    return path


def _wrong_shape_weights(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    other = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    return path


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("")
    return path


@pytest.mark.parametrize("make_argv, needle", [
    (lambda t: ["--out", str(_a_file(t) / "sub")], "is not writable"),
    (lambda t: ["--out", str(t / "out"), "--storage", "bogus://nowhere"], "cannot open Optuna storage"),
    (lambda t: ["--out", str(t / "out"), "--tracking-uri", "http://127.0.0.1:9"], "cannot reach MLflow tracking store"),
    (lambda t: ["--out", str(t / "out"), "--pretrained", str(_garbage_weights(t))], "cannot load"),
    (lambda t: ["--out", str(t / "out"), "--pretrained", str(_wrong_shape_weights(t))], "cannot load"),
], ids=["out-not-writable", "storage-malformed", "tracking-unreachable", "weights-unreadable", "weights-wrong-shape"])
def test_bad_stores_and_weights_one_line_exit_2_nothing_left(tmp_path, capsys, make_argv, needle):
    argv = ["run", "--methods", "lora", "--tasks", "digits", "--jobs", "1", *make_argv(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_corrupt_image_in_a_real_suite_is_one_line_naming_the_file(tmp_path, capsys):
    from PIL import Image

    task = tmp_path / "data" / "cifar"
    task.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(task / f"{i}.jpg")
    (task / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for split in ("train800", "val200", "train800val200", "test"):
        (task / f"{split}.txt").write_text("0.jpg 0\n1.jpg 1\nbad.jpg 2\n")
    code = main(["run", "--suite", "vtab1k", "--data-root", str(tmp_path / "data"), "--tasks", "cifar",
                 "--methods", "linear", "--jobs", "1", "--out", str(tmp_path / "out"), "--no-report",
                 "--pretrained", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jpg" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_force_redoes_trials_and_final_fits(tmp_path):
    args = ["run", "--methods", "lora", "--tasks", "count", "--epochs", "1", "--trials", "2", "--seeds", "1",
            "--out", str(tmp_path), "--no-report", "--jobs", "1"]
    assert main(args) == 0
    first = final_runs(tmp_path)
    assert main([*args, "--force"]) == 0
    runs = final_runs(tmp_path)
    assert len(first) == 1 and len(runs) == 2
    assert runs[0].data.tags["run_key"] == runs[1].data.tags["run_key"]
    assert len(study(tmp_path, "lora", "count").trials) == 2  # the study was started afresh, not extended
    assert runs[0].data.metrics["test_acc"] == runs[1].data.metrics["test_acc"]  # and it is deterministic


def test_a_fixed_variant_gets_its_own_study_and_runs(tmp_path):
    args = ["run", "--methods", "vpt", "--tasks", "count", "--epochs", "1", "--trials", "2", "--seeds", "1",
            "--hparam", "vpt.mode=shallow", "--out", str(tmp_path), "--no-report", "--jobs", "1"]
    assert main(args) == 0
    (run,) = final_runs(tmp_path)
    assert run.data.params["mode"] == "shallow"
    storage = tune.open_storage(None, tmp_path)
    trials = find_study(storage, "vpt", "count", fixed=(("mode", "shallow"),)).trials
    assert len(trials) == 2


def test_bench_tune_runs_one_study_and_prints_its_best_params(tmp_path, capsys):
    import json

    assert main(["tune", "--method", "lora", "--task", "count", "--epochs", "1", "--trials", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    best = json.loads(out[out.index("{"):])
    assert best["study"] == study(tmp_path, "lora", "count").study_name
    assert best["study"].startswith("demo.lora.count#")
    assert set(best["params"]) == {"lr", "weight_decay", "rank", "alpha"}
    assert len(study(tmp_path, "lora", "count").trials) == 2
    assert final_runs(tmp_path) == []  # tuning only: no final fit, the test split untouched


# --------------------------------------------------------------------------- issue 14: --backbone
def test_methods_all_means_every_method_that_runs_on_the_backbone():
    import methods

    assert spec_mod.parse_methods("all", "vit") == methods.names()
    on_swin = spec_mod.parse_methods("all", "swin")
    assert "vpt" not in on_swin and {"full", "linear", "lora", "adapter", "ssf", "rlrr"} <= set(on_swin)
    assert on_swin == [m for m in methods.names() if methods.supports(m, "swin")]


def test_a_run_on_another_backbone_records_it_tunes_apart_and_normalises_as_it(tmp_path, monkeypatch):
    """A small Swin registered as a backbone of the 32 px demo suite: the run trains it end to
    end; its runs record it, its studies are not the demo backbone's, its images are normalised
    with its own mean and std."""
    import bench.data
    from timm.models.swin_transformer import SwinTransformer

    from bench import backbones

    def build(num_classes):
        return SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=8, depths=(1, 1),
                               num_heads=(1, 2), num_classes=num_classes)

    tiny = backbones.Backbone("tiny_swin", "swin", build, 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "nothing (a test)")
    monkeypatch.setitem(backbones._REGISTRY, tiny.name, tiny)
    seen = []
    real_open = bench.data.open_split

    def recording_open(suite, task, split, **kw):
        seen.append((kw["mean"], kw["std"]))
        return real_open(suite, task, split, **kw)

    monkeypatch.setattr(bench.data, "open_split", recording_open)
    args = ["run", "--backbone", "tiny_swin", "--pretrained", "none", "--methods", "lora", "--tasks", "count",
            "--epochs", "1", "--trials", "1", "--seeds", "1", "--out", str(tmp_path), "--no-report", "--jobs", "1"]
    assert main(args) == 0
    (run,) = final_runs(tmp_path)
    assert run.data.params["backbone"] == "tiny_swin"
    assert Experiment.from_json(run.data.tags[tracking.EXPERIMENT_TAG]).backbone == "tiny_swin"
    assert set(seen) == {(tiny.mean, tiny.std)}
    storage = tune.open_storage(None, tmp_path)
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 2  # the tuning and final-fit studies of tiny_swin's experiment, nothing else
    assert find_study(storage, "lora", "count", backbone="tiny_swin").study_name.startswith("demo.lora.count#")
    assert find_study(storage, "lora", "count", final=True, backbone="tiny_swin")


def test_method_sets_partition_the_registry():
    core, baselines, peft, vision = (spec_mod.parse_methods(g) for g in ("core", "baselines", "peft", "vision"))
    assert core == ["adapter", "full", "linear", "lora", "rlrr", "ssf", "vpt"]  # the design's seven
    assert baselines == ["bitfit", "convpass", "fact_tk", "fact_tt", "repadapter"]
    assert vision == ["adapter_plus", "dtl", "gps", "spt_adapter", "spt_lora"]
    assert peft == sorted(name for name in methods.names() if methods.get(name).__module__ == "methods.peft_tuners")
    assert len(peft) == 35 and {"dora", "fourierft", "ia3", "loha", "lokr", "vera", "glora", "pissa"} <= set(peft)
    assert sorted(core + baselines + peft + vision) == spec_mod.parse_methods("all") == methods.names()
    assert spec_mod.parse_methods("core,dora,lora") == [*core, "dora"]  # sets and names mix, once each
    assert "vpt" not in spec_mod.parse_methods("core", "swin")
    with pytest.raises(UserError, match="unknown method 'nope'.*; or a set: all, core, baselines, peft, vision"):
        spec_mod.parse_methods("core,nope")
