"""The method contract's kinds (``methods/registry.py``), each with a test method of
``tests/example_methods.py``, registered, run, swept (2 trials, Ray Tune + Optuna + ASHA) and
reproduced through the real platform on the tiny synthetic benchmark; a generative method's
recipe is looked up in the registry (an unknown one is a clear error) and its per-epoch
snapshots reach the hooks on Ray Train + DeepSpeed workers as in one process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from zeroseg.methods.registry import (
    EXTRA_MODULES_ENV,
    MethodHooks,
    StopTrial,
    get_method,
    register,
)
from zeroseg.platform.errors import ConfigError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import example_methods  # noqa: E402

for _spec in example_methods.METHODS:
    register(_spec)


@pytest.fixture(autouse=True, scope="module")
def _example_methods_on_every_ray_worker():
    """Ray workers (sweep trials, Ray Train workers) find the example methods too: they inherit
    this environment when this module's Ray starts (conftest shuts it down after the module);
    the environment is put back afterwards."""
    saved = {k: os.environ.get(k) for k in (EXTRA_MODULES_ENV, "PYTHONPATH")}
    os.environ[EXTRA_MODULES_ENV] = "example_methods"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS), *[p for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]])
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def tiny_config(root: Path, work: Path, methods: list[str]) -> dict[str, Any]:
    return {
        "name": "kinds",
        "methods": methods,
        "data": {"root": str(root), "synthetic": {"size": "tiny", "seed": 0}},
        "embedding": {"provider": "attributes", "options": {"dim": 32}},
        "segmenter": {"model": {"size": "tiny", "train_num_points": 1024},
                      "optim": {"lr": 0.001, "grad_clip": 1.0},
                      "train": {"steps": 20, "batch_size": 4, "checkpoint_every": 20},
                      "distributed": {"workers": 0, "zero_stage": 0}},
        "features": {"batch_size": 16, "shard_size": 32},
        "evaluation": {"protocols": ["validation", "test"], "settings": ["gzsl", "zsl"]},
        "params": {"pading": {"steps": 20, "batch_size": 64, "num_primitives": 16,
                              "layers": 1, "classifier": {"steps": 40, "batch_size": 128,
                                                          "lr": 0.02}}},
        "work_dir": str(work),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict

    base = tmp_path_factory.mktemp("kinds")
    doc = tiny_config(base / "tiny", base / "work", ["example-nearest", "example-priors"])
    config_path = base / "exp.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    lines: list[str] = []
    pipeline = Pipeline(pipeline_config_from_dict(doc), progress=lines.append)
    for protocol in ("validation", "test"):
        pipeline.context(protocol, "zero-shot")  # trained once, shared by every test below
    return {"base": base, "doc": doc, "config": config_path, "pipeline": pipeline,
            "lines": lines}


def _space(path: Path, config: Path, method: str, knobs: dict[str, Any]) -> Path:
    doc = {"method": method, "config": str(config), "epochs": 2,
           "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
           "searcher": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
           "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
           "knobs": knobs}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _sweep_and_reproduce(tiny: dict[str, Any], method: str, knobs: dict[str, Any],
                         name: str) -> list[Any]:
    """Two trials through Ray Tune, then the best one reproduced with its own seed."""
    from zeroseg.platform.store import open_store
    from zeroseg.platform.tuning.reproduce import reproduce
    from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

    store = tiny["base"] / f"{name}.db"
    space = _space(tiny["base"] / f"{name}.yaml", tiny["config"], method, knobs)
    job = prepare_job(space, name, store=str(store))
    result = run_sweep(job, trials=2, concurrency=1)
    assert result.trials == 2
    with open_store(store) as opened:
        trials = [opened.run(r["id"]) for r in opened.runs(superseded=True)
                  if r["sweep"] == name]
    assert len(trials) == 2 and {t["method"] for t in trials} == {method}
    assert {t["status"] for t in trials} <= {"finished", "stopped"}
    for trial in trials:
        curve = [c for c in trial["curves"] if c["name"] == "val/hm"]
        assert curve and curve[0]["step"] == 1  # a report per epoch, for ASHA
    reps = reproduce(str(store), name, top=1, seeds=1)
    assert len(reps) == 1 and reps[0].exact is True, reps[0].mismatches
    return trials


# -- classifier methods ---------------------------------------------------------------------------
def test_a_classifier_method_runs_and_is_stored(tiny):
    from zeroseg.platform.pipeline.runner import run_one
    from zeroseg.platform.store import open_store

    epochs: list[tuple[str, int]] = []
    outcome = run_one(tiny["pipeline"], "example-nearest", 0, epochs=2,
                      on_epoch=lambda p, e, c: epochs.append((p, e)))
    assert outcome.status == "finished"
    assert epochs == [("validation", 1), ("validation", 2), ("test", 1), ("test", 2)]
    for protocol in ("validation", "test"):
        assert Path(outcome.protocols[protocol].output.artifacts["classifier"]).is_file()
    with open_store(tiny["pipeline"].store_url) as store:
        run = store.run(outcome.run_id)
    assert run["method"] == "example-nearest" and run["status"] == "finished"
    assert {(m["eval_split"], m["task"], m["setting"]) for m in run["metrics"]} >= {
        ("val", "semantic", "gzsl"), ("test", "semantic", "zsl"), ("test", "instance", "gzsl"),
        ("test", "panoptic", "gzsl")}


@pytest.mark.slow
@pytest.mark.ray
def test_a_classifier_method_is_swept_and_reproduced(tiny):
    _sweep_and_reproduce(tiny, "example-nearest",
                         {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}, "nearest")


# -- extra stages ---------------------------------------------------------------------------------
def test_a_stage_is_built_once_per_input_and_handed_to_fit(tiny):
    from zeroseg.platform.pipeline import pipeline_config_from_dict
    from zeroseg.platform.pipeline.runner import run_one

    pipeline = tiny["pipeline"]
    builds = len(example_methods.PRIOR_BUILDS)
    first = run_one(pipeline, "example-priors", 0, record=False)
    assert len(example_methods.PRIOR_BUILDS) == builds + 2  # one per protocol
    folder = Path(first.protocols["test"].output.info["priors"])
    assert folder.parent == pipeline.work / "stages" and folder.name.startswith("priors-test-")
    assert np.load(folder / "prior.npy").max() == 1.0
    # A knob outside the stage's params: the stage is reused (same folder, not rebuilt).
    doc = dict(tiny["doc"], params={"example-priors": {"lr": 0.02}})
    other = pipeline.derive(pipeline_config_from_dict(doc))
    second = run_one(other, "example-priors", 1, record=False)
    assert len(example_methods.PRIOR_BUILDS) == builds + 2
    assert second.protocols["test"].output.info["priors"] == str(folder)
    assert any(f"reusing {folder}" in line for line in tiny["lines"])
    # The stage's own param: a new folder, built once per protocol.
    doc = dict(tiny["doc"], params={"example-priors": {"unseen_prior": 2.0}})
    third = run_one(pipeline.derive(pipeline_config_from_dict(doc)), "example-priors", 0,
                    record=False)
    built = Path(third.protocols["test"].output.info["priors"])
    assert built != folder and np.load(built / "prior.npy").max() == 2.0
    assert len(example_methods.PRIOR_BUILDS) == builds + 4
    assert not [p for p in (pipeline.work / "stages").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.ray
def test_a_stage_method_is_swept_and_reproduced(tiny):
    _sweep_and_reproduce(tiny, "example-priors",
                         {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}, "priors")


# -- generative methods: the recipe is the spec's, the training the platform's --------------------
def test_an_unknown_or_recipeless_method_has_no_generator_to_train():
    from zeroseg.platform.training.generator import generator_recipe_of

    with pytest.raises(ConfigError, match="unknown method 'no-such-method'"):
        generator_recipe_of("no-such-method")
    with pytest.raises(ConfigError, match="declares no generator recipe"):
        generator_recipe_of("example-nearest")
    assert generator_recipe_of("gmmn") is get_method("gmmn").generator_recipe
    assert generator_recipe_of("pading") is get_method("pading").generator_recipe


def test_no_method_module_imports_ray_deepspeed_training_or_the_store():
    import re

    pattern = re.compile(r"^\s*(from|import)\s+(ray|deepspeed|zeroseg\.platform\.training|"
                         r"zeroseg\.platform\.store)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "methods").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []


def _generator_run(tiny: dict[str, Any], workers: int, stop_at: int | None
                   ) -> tuple[list[int], Any]:
    from zeroseg.platform.pipeline.runner import method_inputs
    from zeroseg.platform.training.config import MethodTrainingConfig

    pipeline = tiny["pipeline"]
    config = dataclasses.replace(pipeline.config, method_training=MethodTrainingConfig(
        workers=workers, zero_stage=1))
    derived = pipeline.derive(config)
    spec = get_method("pading")
    method_config = spec.build_config(tiny["doc"]["params"]["pading"])
    ctx = derived.context("validation", "zero-shot")
    work = tiny["base"] / f"gen-{workers}-{stop_at}"
    work.mkdir()
    inputs = method_inputs(derived, spec, method_config, ctx, 0, work)
    epochs: list[int] = []

    def on_epoch(epoch: int, classifier: Any) -> None:
        epochs.append(epoch)
        assert classifier(np.zeros((3, inputs.embed_dim), np.float32)).shape == \
            (3, inputs.num_classes + 1)
        if epoch == stop_at:
            raise StopTrial()

    hooks = MethodHooks(epochs=4, on_epoch=on_epoch)
    try:
        output = spec.fit(method_config, inputs, hooks)
    except StopTrial:
        output = None
    return epochs, output


@pytest.mark.slow
@pytest.mark.ray
def test_generator_epochs_reach_the_hooks_on_workers_and_a_stop_ends_them(tiny):
    single, _ = _generator_run(tiny, 1, None)
    assert single == [1, 2, 3, 4]
    distributed, output = _generator_run(tiny, 2, None)
    assert distributed == [1, 2, 3, 4] and output is not None
    stopped, output = _generator_run(tiny, 2, 2)
    assert stopped == [1, 2] and output is None


def test_a_driver_and_its_ray_train_workers_fit_the_cpus_they_name():
    """A trial (or a side-by-side run) that drives a Ray Train job holds DRIVER_CPUS; its
    workers ask for that much less, so workers x cpus_per_worker CPUs fit beside it (2 workers
    of 1 CPU in a trial on a 2-CPU machine: a Ray Train placement group of 2 x 1 CPU beside a
    0.01-CPU trial would wait forever). Torch threads stay round(cpus_per_worker)."""
    from zeroseg.platform.pipeline.runner import driver_cpus, ray_train_slots
    from zeroseg.platform.training.config import DRIVER_CPUS, MethodTrainingConfig

    for workers, cpus, gpu in ((2, 1.0, False), (1, 2.0, False), (2, 0.5, False), (8, 4.0, True)):
        training = MethodTrainingConfig(workers=workers, cpus_per_worker=cpus, use_gpu=gpu)
        per_worker = training.worker_resources()
        assert DRIVER_CPUS + workers * per_worker["CPU"] <= workers * cpus + 1e-12
        assert per_worker["CPU"] > cpus / 2 and per_worker.get("GPU", 0) == (1 if gpu else 0)
    assert driver_cpus("example-pixels", 1, 1.0) == DRIVER_CPUS  # a model method
    assert driver_cpus("example-nearest", 2, 1.0) == DRIVER_CPUS  # generator on workers
    assert driver_cpus("example-nearest", 1, 1.0) == 1.0  # trains in the driver itself
    # Side by side (run_many, a sweep's concurrency): only as many such jobs as their workers'
    # CPUs fit; more would each hold a driver while waiting for workers none can place.
    two = MethodTrainingConfig(workers=2, cpus_per_worker=1.0)
    assert ray_train_slots("example-pixels", two, 2.0) == 1
    assert ray_train_slots("example-pixels", MethodTrainingConfig(workers=1), 2.0) == 2
    assert ray_train_slots("example-pixels", two, 1.0) == 1  # at least one, Ray queues it
    assert ray_train_slots("example-nearest", MethodTrainingConfig(workers=1), 2.0) is None


# -- model methods --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_a_model_method_trains_on_ray_train_and_its_predictions_are_scored(tiny):
    from zeroseg.methods.registry import Predictions
    from zeroseg.platform.pipeline.runner import run_one
    from zeroseg.platform.store import open_store

    seen: list[tuple[str, int, float]] = []

    def on_epoch(protocol: str, epoch: int, predictions: Any) -> None:
        assert isinstance(predictions, Predictions)
        result = tiny["pipeline"].model_context(protocol).evaluation().semantic_miou(
            predictions)
        seen.append((protocol, epoch, result.seen["iou"]))

    outcome = run_one(tiny["pipeline"], "example-pixels", 0, on_epoch=on_epoch)
    assert outcome.status == "finished"
    assert [(p, e) for p, e, _ in seen] == [("validation", 1), ("validation", 2), ("test", 1),
                                           ("test", 2)]
    test = outcome.protocols["test"]
    assert Path(test.output.artifacts["model"]).is_file()
    assert set(test.evaluations) == {(t, s) for t in ("semantic", "instance", "panoptic")
                                     for s in ("gzsl", "zsl")}
    assert test.evaluations[("semantic", "gzsl")].seen["iou"] > 0
    with open_store(tiny["pipeline"].store_url) as store:
        run = store.run(outcome.run_id)
    assert run["method"] == "example-pixels" and run["status"] == "finished"
    # Its audit is its own training set's filter, not a segmenter's (it read none).
    audit = run["leakage_audit"]["protocols"]["test"]
    assert audit["model"] == "example-pixels" and "segmenter" not in audit
    assert 0 < audit["images_kept"] < audit["images_total"] and audit["images_dropped"] > 0
    assert test.output.info["training_images"] == audit["images_kept"]
    assert not run["artifacts"]["segmenter"] and not run["artifacts"]["features"]
    assert {c["step"] for c in run["curves"] if c["name"] == "model/loss"} == {1, 2}
    assert {(m["eval_split"], m["task"]) for m in run["metrics"]} == {
        (split, task) for split in ("val", "test")
        for task in ("semantic", "instance", "panoptic")}


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_model_worker_resumes_from_the_last_epoch_checkpoint(tiny, tmp_path):
    """Rank 1 of a 2-worker model job SIGKILLs itself after epoch 2's report; Ray Train
    restarts the job from that checkpoint (the method's state and start_epoch), it trains
    epoch 3 only, and ends with the weights of an uninterrupted run."""
    from zeroseg.platform.pipeline.runner import model_data, run_context
    from zeroseg.platform.training.config import MethodTrainingConfig
    from zeroseg.platform.training.model import train_model

    spec = get_method("example-pixels")
    config = example_methods.PixelsConfig(epochs=3, steps_per_epoch=5)
    ctx = run_context(tiny["pipeline"], spec, "test")
    data = model_data(tiny["pipeline"], spec, config, ctx)
    training = MethodTrainingConfig(workers=2, cpus_per_worker=0.5, zero_stage=0,
                                    max_failures=1)

    def train(name: str, fault: dict[str, Any] | None) -> tuple[list[int], dict[str, Any]]:
        epochs: list[int] = []
        state = train_model("example-pixels", config, 0, data, training, tmp_path / name,
                            on_metrics=lambda epoch, _: epochs.append(epoch), fault=fault)
        return epochs, state

    marker = tmp_path / "killed.marker"
    resumed_epochs, resumed = train("killed", {"rank": 1, "step": 2, "marker": str(marker)})
    assert marker.read_text() == "killed at step 2\n"
    assert resumed_epochs == [1, 2, 3]  # epoch 3 after the restart, not 1 again
    epochs, reference = train("reference", None)
    assert epochs == [1, 2, 3]
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.slow
@pytest.mark.ray
def test_a_model_method_is_swept_and_reproduced(tiny):
    from zeroseg.platform.tuning.reproduce import reproduce

    _sweep_and_reproduce(tiny, "example-pixels",
                         {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}, "pixels")
    # Two seeds side by side as Ray tasks: each run's driver holds almost no CPU, so both Ray
    # Train jobs get their worker (drivers holding a CPU each would leave them none: a hang).
    reps = reproduce(str(tiny["base"] / "pixels.db"), "pixels", top=1, seeds=2, force=True)
    assert len(reps) == 1 and len(reps[0].runs) == 2 and reps[0].exact is True
    assert all(run.status == "finished" for run in reps[0].runs)


@pytest.mark.slow
@pytest.mark.ray
def test_a_generative_method_is_swept_on_two_deepspeed_workers(tiny):
    """method_training.workers = 2: every trial's generator trains on two Ray Train workers and
    still reports its validation objective after each epoch (ASHA sees every epoch). Half a CPU
    per worker: with the trial's token share, two workers fit a two-CPU machine."""
    doc = dict(tiny["doc"], methods=["gmmn"],
               method_training={"workers": 2, "zero_stage": 1, "cpus_per_worker": 0.5},
               params={"gmmn": {"steps": 20, "batch_size": 64, "log_every": 10,
                                "classifier": {"batch_size": 128, "lr": 0.02}}})
    config = tiny["base"] / "exp-two-workers.yaml"
    config.write_text(yaml.safe_dump(doc))
    trials = _sweep_and_reproduce(dict(tiny, config=config), "gmmn",
                                  {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
                                  "gmmn-two-workers")
    for trial in trials:
        assert trial["config"]["method_training"]["workers"] == 2
        losses = [c for c in trial["curves"] if c["name"] == "val/generator/loss"]
        assert len(losses) >= 2  # every logged step of rank 0, not one point per job
