"""Distributed segmenter training: Ray Train + DeepSpeed, checkpoints, failures, reproducibility.

Real components throughout: Ray Train's TorchTrainer (one Ray instance for the module),
DeepSpeed engines over gloo, transformers' Mask2Former, the synthetic tiny benchmark.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.training.checkpoints import (
    EXPORT_DIR,
    INFO_FILE,
    CheckpointError,
    verify_checkpoint,
)
from zeroseg.platform.training.config import SegmenterTrainConfig, train_config_from_dict
from zeroseg.platform.training.deepspeed_engine import deepspeed_config
from zeroseg.platform.training.loop import batch_indices, steps_per_epoch

STEPS = 6
CHECKPOINT_EVERY = 2


def _merge(base: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def config_dict(root: Path, run_dir: Path, **dotted: Any) -> dict[str, Any]:
    base = {
        "data": {"root": str(root)},
        "model": {"size": "tiny", "train_num_points": 1024},
        "train": {"steps": STEPS, "batch_size": 2, "seed": 0,
                  "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "eval": False},
        "distributed": {"workers": 2, "zero_stage": 2, "precision": "fp32", "max_failures": 0},
        "output": {"run_dir": str(run_dir)},
    }
    return _merge(base, {k.replace("__", "."): v for k, v in dotted.items()})


def make_config(root: Path, run_dir: Path, **dotted: Any) -> SegmenterTrainConfig:
    return train_config_from_dict(config_dict(root, run_dir, **dotted))


def weights(segmenter_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(segmenter_dir / "model.pt", map_location="cpu", weights_only=True)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zeroseg.platform.data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate("tiny", 0, root, workers=1)
    return root


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from zeroseg.platform.training.ray_runner import ensure_ray

    started = ensure_ray(None, verbose=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def two_worker_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory, ray_session
                   ) -> dict[str, Any]:
    """`zeroseg train segmenter` with 2 Ray workers, DeepSpeed ZeRO-2, fp32, evaluation on."""
    from zeroseg.platform.cli import main

    base = tmp_path_factory.mktemp("two_workers")
    run_dir = base / "run"
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(tiny, run_dir, train__eval=True)))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "segmenter", str(path)])
    assert code == 0, err.getvalue()[-2000:]
    return {"run_dir": run_dir, "config": path, "stdout": out.getvalue()}


# -- bad input fails before Ray ------------------------------------------------------------------
def test_config_errors_name_the_key_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    from zeroseg.platform.cli import main
    from zeroseg.platform.training import ray_runner

    # This test runs before the module's Ray tests; another test module in this process may
    # have left a Ray instance, in which case the spies below still prove Ray was not reached.
    was_initialized = ray.is_initialized()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray_runner, "ensure_ray", refuse)
    good = config_dict(tmp_path / "data", tmp_path / "run")
    cases = [
        (_merge(good, {"train.stesp": 3}), "unknown key 'train.stesp' (did you mean 'steps'?)"),
        (_merge(good, {"distributed.workers": "two"}), "distributed.workers must be an integer"),
        (_merge(good, {"model.hidden_dim": 1.5}), "model.hidden_dim must be int | None"),
        (_merge(good, {"distributed.zero_stage": 4}),
         "distributed.zero_stage must be 0, 1, 2 or 3"),
        (_merge(good, {"distributed.precision": "fp16"}),
         "distributed.precision must be one of ['fp32', 'bf16']"),
        (_merge(good, {"data.oracle": True, "data.validation": True}), "data.validation"),
    ]
    for i, (data, needle) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["train", "segmenter", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and str(path) in err, err
        assert len(err.splitlines()) == 1
    # --set overrides are checked the same way
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(good))
    assert main(["train", "segmenter", str(path), "--set", "optim.lrr=0.1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    # a missing dataset (no synthetic section to generate it) is a one-line error too
    assert main(["train", "segmenter", str(path)]) == 2
    assert "data.root not found" in capsys.readouterr().err
    assert ray.is_initialized() is was_initialized  # normally: still False
    assert not (tmp_path / "run").exists()


# -- pure pieces ---------------------------------------------------------------------------------
def test_batch_indices_shard_each_epoch_like_a_distributed_sampler():
    n, batch, world, seed = 23, 2, 3, 7
    per_epoch = steps_per_epoch(n, batch, world)
    assert per_epoch == 3  # 23 // 3 = 7 items per rank, 3 full batches
    for epoch in range(3):
        seen: list[int] = []
        for rank in range(world):
            for within in range(per_epoch):
                idx, e = batch_indices(epoch * per_epoch + within, n, batch, rank, world, seed)
                assert e == epoch and len(idx) == batch
                seen += idx
        assert len(seen) == len(set(seen)) == per_epoch * batch * world  # disjoint across ranks
    first = [batch_indices(s, n, batch, 0, world, seed)[0] for s in range(per_epoch)]
    second = [batch_indices(per_epoch + s, n, batch, 0, world, seed)[0] for s in range(per_epoch)]
    assert first != second  # each epoch has its own permutation
    assert batch_indices(5, n, batch, 1, world, seed) == batch_indices(5, n, batch, 1, world, seed)
    assert batch_indices(0, n, batch, 0, world, 8) != batch_indices(0, n, batch, 0, world, seed)
    with pytest.raises(ConfigError, match="train.batch_size"):
        batch_indices(0, 5, 4, 0, 2, 0)


def test_deepspeed_config_follows_the_training_config(tmp_path):
    cfg = make_config(tmp_path, tmp_path, distributed__zero_stage=3, distributed__precision="bf16",
                      train__batch_size=3, optim__grad_clip=0.5)
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 1
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in ds and "optimizer" not in ds  # the client AdamW, fp32 master weights
    assert "torch_autocast" not in deepspeed_config(make_config(tmp_path, tmp_path))


def test_deepspeed_does_not_build_its_inference_shm_extension(tmp_path, monkeypatch):
    # DeepSpeed's own backend factory, after our engine set-up: no JIT build of the
    # shared-memory op (it would compile into TORCH_EXTENSIONS_DIR).
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    from deepspeed.comm.torch import build_shm_op

    from zeroseg.platform.training.deepspeed_engine import _skip_shm_comm, select_accelerator

    select_accelerator(False)
    _skip_shm_comm()
    assert build_shm_op() is None
    assert not (tmp_path / "ext").exists()


def test_lr_schedule_warms_up_then_decays_to_zero(tmp_path):
    from zeroseg.platform.training.deepspeed_engine import lr_factor

    poly = make_config(tmp_path, tmp_path, train__steps=100, optim__warmup_steps=10)
    factors = [lr_factor(s, poly) for s in range(100)]
    assert factors[0] == pytest.approx(0.1 * 1.0) and factors[4] == pytest.approx(0.5 * 0.96**0.9)
    assert factors[10] == pytest.approx(0.9**0.9) and factors[99] == pytest.approx(0.01**0.9)
    assert all(a > b for a, b in zip(factors[10:], factors[11:], strict=False))
    constant = make_config(tmp_path, tmp_path, optim__schedule="constant")
    assert {lr_factor(s, constant) for s in range(STEPS)} == {1.0}


def test_prepare_picks_classes_and_images_per_protocol(tiny, tmp_path):
    """Driver-side preparation (no Ray): which classes the head learns, which images it sees."""
    from zeroseg.platform.data.coco import CocoPanoptic
    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.training.ray_runner import prepare

    split = load_classes_json(tiny / "annotations" / "classes.json")
    panoptic = CocoPanoptic.from_layout(CocoLayout(tiny, "train"))
    unseen = {c.id for c in split.unseen}
    held_out = {c.id for c in split.classes if c.val_unseen}

    zero_shot = prepare(make_config(tiny, tmp_path / "a"))
    assert zero_shot.class_ids == [c.id for c in split.classes if c.id not in unseen]
    # drop-images: no kept training image has a segment of an unseen class, and some were cut
    assert 0 < len(zero_shot.image_ids) < len(panoptic.image_ids)
    for image_id in zero_shot.image_ids:
        assert not {s.category_id for s in panoptic.segments(image_id)} & unseen

    validation = prepare(make_config(tiny, tmp_path / "b", data__validation=True))
    assert set(validation.class_ids) == set(zero_shot.class_ids) - held_out and held_out
    assert len(validation.image_ids) < len(zero_shot.image_ids)

    oracle = prepare(make_config(tiny, tmp_path / "c", data__oracle=True))
    assert oracle.class_ids == [c.id for c in split.classes] and oracle.leakage is None
    assert oracle.image_ids == sorted(panoptic.image_ids)
    assert oracle.dataset == zero_shot.dataset and oracle.config_hash != zero_shot.config_hash

    # data.synthetic generates a missing dataset (before Ray); a too large batch is refused.
    generated = tmp_path / "generated"
    cfg = make_config(generated, tmp_path / "d", data__synthetic={"size": "tiny", "seed": 0})
    assert prepare(cfg).dataset == zero_shot.dataset  # same size and seed: the same files
    with pytest.raises(ConfigError, match="train.batch_size"):
        prepare(make_config(tiny, tmp_path / "e", train__batch_size=40))


# -- Ray Train + DeepSpeed -----------------------------------------------------------------------
@pytest.mark.ray
def test_two_workers_zero2_end_to_end(two_worker_run, tiny):
    from zeroseg.methods.segmenter.checkpoint import load_segmenter
    from zeroseg.platform.data.synthetic.generate import load_classes_json

    run_dir: Path = two_worker_run["run_dir"]
    split = load_classes_json(tiny / "annotations" / "classes.json")
    seen_ids = [c.id for c in split.classes if not c.unseen]

    model, meta = load_segmenter(run_dir / "segmenter")
    assert meta["class_ids"] == seen_ids and model.num_classes == len(seen_ids) < split.num_classes
    assert meta["step"] == STEPS and meta["world_size"] == 2 and meta["zero_stage"] == 2
    assert meta["split"] == split.name and meta["dataset"].startswith("sha256:")

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["metrics"]) == {"semantic", "instance", "panoptic"}
    for task, metric in (("semantic", "iou"), ("instance", "ap50"), ("panoptic", "pq")):
        doc = results["metrics"][task]
        assert doc["setting"] == "gzsl" and metric in doc["seen"] and metric in doc["hm"]
        # The zero-shot segmenter's head has no unseen column: unseen classes are never
        # predicted, so their scores are exactly 0 (the "seen only" baseline).
        assert doc["unseen"][metric] == 0.0 and doc["hm"][metric] == 0.0
    # ... and the same figures are in the results store, as a "seen-only" run
    from zeroseg.platform.store import open_store

    assert "stored as run 1" in two_worker_run["stdout"]
    with open_store(run_dir / "results.db") as store:
        stored = store.run(1)
    assert stored["method"] == "seen-only" and stored["leakage_audit"]["passed"] is True
    hm = {(m["task"], m["metric"]): m["value"] for m in stored["metrics"]
          if m["subset"] == "seen" and m["eval_split"] == "test"}
    assert hm[("semantic", "iou")] == results["metrics"]["semantic"]["seen"]["iou"]
    assert results["training"]["start_step"] == 0 and results["training"]["attempts"] == 1
    assert results["leakage"]["images_dropped"] > 0
    assert results["training_images"] == results["leakage"]["images_kept"]
    assert np.isfinite(results["training"]["loss"])

    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "log"] == list(range(1, STEPS + 1))
    # CheckpointConfig(num_to_keep=2): the last two of the three checkpoints remain, each with
    # both ranks' manifests and, under ZeRO-2, each rank's own optimizer shard.
    checkpoints = sorted(p for p in (run_dir / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2
    steps = sorted(verify_checkpoint(c).step for c in checkpoints)
    assert steps == [STEPS - CHECKPOINT_EVERY, STEPS]
    rank1 = json.loads((checkpoints[-1] / "zeroseg_manifest_rank1.json").read_text())["files"]
    assert any("zero_pp_rank_1" in name and "optim_states" in name for name in rank1)

    out = two_worker_run["stdout"]
    assert f"step {STEPS}/{STEPS}" in out and "seen unseen     HM" in out
    for task in ("semantic", "instance", "panoptic"):
        assert task in out


@pytest.mark.ray
def test_killed_worker_resumes_from_last_checkpoint(two_worker_run, tiny, tmp_path):
    from zeroseg.platform.training.ray_runner import run_training

    marker = tmp_path / "killed.marker"
    config = make_config(tiny, tmp_path / "run", distributed__max_failures=1)
    # Rank 1 SIGKILLs its own process after step 3; the last checkpoint is at step 2.
    result = run_training(config, fault={"rank": 1, "step": 3, "marker": str(marker)})
    assert marker.is_file()
    starts = [r["step"] for r in result.log if r["event"] == "start"]
    assert starts == [0, CHECKPOINT_EVERY]  # the second attempt began at the checkpoint, not 0
    assert result.summary["start_step"] == CHECKPOINT_EVERY
    assert result.metrics["start_step"] == CHECKPOINT_EVERY and result.metrics["step"] == STEPS
    assert result.results["training"]["attempts"] == 2
    logged = [r["step"] for r in result.log if r["event"] == "log"]
    assert logged[-(STEPS - CHECKPOINT_EVERY):] == list(range(CHECKPOINT_EVERY + 1, STEPS + 1))
    # Same data order and per-step seeds after the resume: the weights are those of the
    # uninterrupted run with the same config.
    resumed = weights(result.segmenter_dir)
    reference = weights(two_worker_run["run_dir"] / "segmenter")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.ray
def test_corrupt_or_mismatched_checkpoints_are_clear_errors(two_worker_run, tiny, tmp_path):
    from zeroseg.methods.segmenter.checkpoint import load_segmenter
    from zeroseg.platform.training.ray_runner import latest_checkpoint, run_training

    run_dir: Path = two_worker_run["run_dir"]
    latest = latest_checkpoint(run_dir)
    assert latest is not None and verify_checkpoint(latest).step == STEPS

    # A flipped byte in rank 1's optimizer shard.
    bad = tmp_path / "bad"
    shutil.copytree(latest, bad)
    shard = next(bad.glob("step_*/zero_pp_rank_1_*optim_states.pt"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt file") as info:
        verify_checkpoint(bad)
    assert str(shard) in str(info.value)
    config = make_config(tiny, tmp_path / "r1", train__resume_from=str(bad))
    with pytest.raises(CheckpointError) as info:
        run_training(config)
    assert str(shard) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "r1").exists()  # refused before anything was written

    # A missing shard, a truncated info file.
    missing = tmp_path / "missing"
    shutil.copytree(latest, missing)
    next(missing.glob("step_*/zero_pp_rank_0_*optim_states.pt")).unlink()
    with pytest.raises(CheckpointError, match="checkpoint file missing"):
        verify_checkpoint(missing)
    (missing / INFO_FILE).write_text('{"format": ')
    with pytest.raises(CheckpointError, match="malformed JSON"):
        verify_checkpoint(missing)

    # Mismatches with the run that wants to resume: model shape, world size, config.
    good = tmp_path / "good"
    shutil.copytree(latest, good)
    for dotted, needle in (({"model__hidden_dim": 32}, "first difference: model.hidden_dim"),
                           ({"distributed__workers": 1}, "world_size"),
                           ({"data__oracle": True}, "class_ids"),
                           ({"train__seed": 1}, "first difference: train.seed")):
        config = make_config(tiny, tmp_path / "r2", train__resume_from=str(good), **dotted)
        with pytest.raises(CheckpointError, match=needle):
            run_training(config)
    # Re-running the finished run's directory with another seed is refused (before Ray).
    config = train_config_from_dict(_merge(yaml.safe_load(two_worker_run["config"].read_text()),
                                           {"train.seed": 5}))
    with pytest.raises(CheckpointError, match="first difference: train.seed"):
        run_training(config)

    # The exported segmenter is verified too: a truncated model.pt is a one-line error.
    exported = tmp_path / "exported"
    shutil.copytree(latest / EXPORT_DIR, exported)
    model_pt = exported / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:1000])
    with pytest.raises(ZerosegError, match="model.pt"):
        load_segmenter(exported)


def test_local_mode_runs_are_reproducible(tiny, tmp_path):
    """Ray Train's local mode (workers: 0, this process): same seed, same weights."""
    from zeroseg.platform.training.ray_runner import run_training

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        config = make_config(tiny, tmp_path / name, train__seed=seed, train__steps=3,
                             train__checkpoint_every=3, distributed__workers=0,
                             distributed__zero_stage=0)
        result = run_training(config)
        assert result.summary["world_size"] == 1 and result.summary["step"] == 3
        return weights(result.segmenter_dir)

    threads = torch.get_num_threads()
    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert torch.get_num_threads() == threads and "WORLD_SIZE" not in os.environ
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.ray
@pytest.mark.slow
def test_one_worker_ray_runs_are_reproducible(tiny, tmp_path, ray_session):
    from zeroseg.platform.training.ray_runner import run_training

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        config = make_config(tiny, tmp_path / name, train__seed=seed, train__steps=3,
                             train__checkpoint_every=3, distributed__workers=1)
        return weights(run_training(config).segmenter_dir)

    a, b, c = run("a", 0), run("b", 0), run("c", 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.ray
@pytest.mark.slow
def test_zero3_bf16_oracle_exports_full_weights(tiny, tmp_path, ray_session):
    """ZeRO-3 partitions the parameters; the export gathers them. bf16 runs under autocast."""
    from zeroseg.methods.segmenter.checkpoint import load_segmenter
    from zeroseg.platform.training.ray_runner import run_training

    config = make_config(tiny, tmp_path / "run", distributed__zero_stage=3,
                         distributed__precision="bf16", data__oracle=True, train__steps=2,
                         train__checkpoint_every=2, train__eval=True)
    result = run_training(config)
    model, meta = load_segmenter(result.segmenter_dir)
    assert meta["zero_stage"] == 3 and meta["precision"] == "bf16" and meta["oracle"] is True
    assert model.num_classes == len(meta["class_ids"]) == 32
    assert all(v.dtype == torch.float32 for v in weights(result.segmenter_dir).values()
               if v.is_floating_point())
    assert set(result.results["metrics"]) == {"semantic", "instance", "panoptic"}
