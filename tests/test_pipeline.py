"""``zeroseg run``: config validation, the method registry, the stages end to end on the tiny
benchmark (real segmenter training, feature cache, methods, inference, evaluators, store).

One module-scoped pipeline trains three tiny segmenters (oracle, test and validation protocols,
20 steps each, Ray Train's local mode with DeepSpeed) and is shared by the tests below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.methods.registry import StopTrial, get_method, registry
from zeroseg.platform.config import to_dict
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict, run_config_hash

REPO = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, work: Path, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "test",
        "methods": ["supervised", "seen-only", "projection", "pading"],
        "seeds": [0],
        "data": {"root": str(root), "synthetic": {"size": "tiny", "seed": 0}},
        "embedding": {"provider": "attributes", "options": {"dim": 32, "noise": 0.1}},
        "segmenter": {"model": {"size": "tiny", "train_num_points": 1024},
                      "optim": {"lr": 0.001, "grad_clip": 1.0},
                      "train": {"steps": 20, "batch_size": 4, "checkpoint_every": 20,
                                "log_every": 10},
                      "distributed": {"workers": 0, "zero_stage": 0}},
        "features": {"batch_size": 16, "shard_size": 32},
        "evaluation": {"protocols": ["test", "validation"], "settings": ["gzsl", "zsl"]},
        "params": {
            "projection": {"steps": 60, "batch_size": 128},
            "pading": {"steps": 40, "batch_size": 64, "num_primitives": 16, "layers": 1,
                       "classifier": {"steps": 60, "batch_size": 128, "lr": 0.01}},
        },
        "work_dir": str(work),
    }
    for key, value in changes.items():
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return doc


# -- config and registry ---------------------------------------------------------------------------
def test_registry_lists_table1_methods_in_order():
    names = list(registry())
    assert names[:7] == ["supervised", "seen-only", "projection", "gmmn", "pading-p",
                         "pading-pa", "pading"]
    assert get_method("pading-pa").build_config({}).alignment is True
    assert get_method("pading-pa").build_config({}).disentanglement is False
    assert get_method("pading-p").build_config({"tau": 0.3}).tau == 0.3


@pytest.mark.parametrize("change, needle", [
    ({"methods": ["padding"]}, "unknown method 'padding'"),
    ({"methods": []}, "methods: expected at least one"),
    ({"seeds": [1, 1]}, "seeds: expected distinct"),
    ({"params.pading.num_primitivs": 10}, "did you mean 'num_primitives'"),
    ({"params.pading.tau": "high"}, "params.pading"),
    ({"params.pading-p.alignment": True}, "fixed by method 'pading-p'"),
    ({"params.supervised": {"x": 1}}, "takes no parameters"),
    ({"evaluation.tasks": ["depth"]}, "unknown task 'depth'"),
    ({"evaluation.protocols": ["test", "test"]}, "duplicate"),
    ({"data.eval_split": "train"}, "eval_split must differ"),
])
def test_config_errors_name_the_key(tmp_path, change, needle):
    doc = tiny_config(tmp_path / "data", tmp_path / "work", **change)
    with pytest.raises(ConfigError, match=None) as info:
        pipeline_config_from_dict(doc, where="exp.yaml")
    assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_the_config_hash_ignores_seed_and_paths(tmp_path):
    a = pipeline_config_from_dict(tiny_config(tmp_path / "d", tmp_path / "w"))
    b = pipeline_config_from_dict(tiny_config(tmp_path / "d", tmp_path / "other",
                                              seeds=[3], name="x"))
    c = pipeline_config_from_dict(tiny_config(tmp_path / "d", tmp_path / "w",
                                              **{"params.pading.tau": 0.5}))
    assert run_config_hash(a, "pading") == run_config_hash(b, "pading")
    assert run_config_hash(a, "pading") != run_config_hash(c, "pading")
    # a knob of another method does not change this method's identity
    assert run_config_hash(a, "projection") == run_config_hash(c, "projection")


# -- snapshots (per-epoch evaluation) never change training ----------------------------------------
def test_snapshots_leave_the_generator_trajectory_unchanged():
    from zeroseg.methods.common import ClassifierConfig, retrain_classifier
    from zeroseg.methods.pading import PADingConfig, train_generator

    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16)).astype(np.float32)
    labels = np.repeat(np.arange(4), 30)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    cfg = PADingConfig(steps=12, batch_size=24, num_primitives=8, layers=1, heads=2,
                       classes_per_step=2, log_every=4)
    plain = train_generator(real, labels, emb, [0, 1, 2, 3], [4, 5], cfg, seed=3)
    seen_steps = []

    def hook(step, generator):  # does real work: retrains a classifier from the snapshot
        seen_steps.append(step)
        queries = rng.normal(size=(50, 16)).astype(np.float32)
        targets = np.array(list(range(4)) * 12 + [6, 6])
        retrain_classifier(queries, targets, generator, [4, 5],
                           ClassifierConfig(steps=3, batch_size=10), seed=1)
        torch.rand(5)  # consuming the global RNG inside the hook must not matter either

    hooked = train_generator(real, labels, emb, [0, 1, 2, 3], [4, 5], cfg, seed=3,
                             on_snapshot=hook, snapshot_every=4)
    assert seen_steps == [4, 8]
    for (name, a), (_, b) in zip(plain.model.state_dict().items(),
                                 hooked.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert plain.history == hooked.history


# -- the evaluation split seen through the validation view -----------------------------------------
def test_validation_view_dataset_erases_test_unseen_classes(tiny_data, tmp_path):
    from zeroseg.platform.data.coco import CocoInstances, CocoPanoptic
    from zeroseg.platform.data.leakage import validation_eval_dataset
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.evaluation import evaluate_panoptic, evaluate_semantic

    layout = CocoLayout(tiny_data, "val")
    split = load_classes_json(layout.classes_json)
    out = validation_eval_dataset(layout, split, tmp_path / "view")
    unseen = {c.id for c in split.unseen}
    unseen_png = {c.png_label for c in split.unseen}
    view = split.validation_view()
    inst = json.loads(out.instances_json.read_text())
    assert not unseen & {c["id"] for c in inst["categories"]}
    assert not unseen & {a["category_id"] for a in inst["annotations"]}
    assert len(inst["images"]) == len(json.loads(layout.instances_json.read_text())["images"])
    pan = CocoPanoptic.from_layout(out)
    for image_id in pan.image_ids:
        assert not unseen & {s.category_id for s in pan.segments(image_id)}
        ids = set(np.unique(pan.read_ids(image_id)).tolist()) - {0}
        assert ids == {s.id for s in pan.segments(image_id)}  # erased segments are VOID now
    for png in out.semantic_pngs.glob("*.png"):
        assert not unseen_png & set(np.unique(np.asarray(Image.open(png))).tolist())
    CocoInstances(out.instances_json)  # readable by pycocotools
    # the ground truth scores 100% against itself in the validation view
    assert evaluate_semantic(out, view, out.semantic_pngs).hm["iou"] == 1.0
    pq = evaluate_panoptic(out, view, out.panoptic_pngs, pred_json=out.panoptic_json)
    assert pq.hm["pq"] == 1.0
    assert validation_eval_dataset(layout, split, tmp_path / "view") == out  # reused


def test_the_dataset_fingerprint_is_taken_after_the_benchmark_is_generated(tmp_path):
    """A first `zeroseg run` generates the synthetic benchmark; the stages it keys by the
    dataset's fingerprint must have the keys a re-run computes (found, not trained again)."""
    config = pipeline_config_from_dict(tiny_config(tmp_path / "data", tmp_path / "work"))
    first = Pipeline(config, progress=lambda line: None)
    fingerprint = first.dataset_fingerprint  # before anything else: generates the data
    assert (tmp_path / "data" / "annotations" / "panoptic_train.json").is_file()
    assert Pipeline(config).dataset_fingerprint == fingerprint


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from zeroseg.platform.data.synthetic.generate import generate

    root = tmp_path_factory.mktemp("pipeline") / "tiny"
    generate("tiny", 0, root, workers=1)
    return root


def test_a_model_method_reads_no_segmenter_and_detection_is_scored_on_boxes(tiny_data,
                                                                            tmp_path):
    """A model method's context builds no segmenter or feature cache; its instance
    predictions are scored as ZSI on masks and as ZSD (``detection``) on their boxes, each
    equal to pycocotools' COCOeval of the same results (segm / bbox)."""
    from pycocotools import mask as mask_utils

    from zeroseg.methods.registry import Predictions
    from zeroseg.platform.evaluation import evaluate_instance_coco
    from zeroseg.platform.pipeline.runner import run_context

    work = tmp_path / "work"
    config = pipeline_config_from_dict(tiny_config(
        tiny_data, work, methods=["zsi"], **{"evaluation.tasks": ["instance", "detection"]}))
    pipeline = Pipeline(config)
    ctx = run_context(pipeline, get_method("zsi"), "test")
    assert ctx.segmenter is None and ctx.eval_cache is None and ctx.kind == "model"
    assert not (work / "segmenters").exists() and not (work / "features").exists()

    evaluation = ctx.evaluation()
    gt = evaluation.instances_json()
    # Every GT instance found with its exact box, but a mask of only the box's top rows: right
    # for detection, wrong (IoU < 0.5) for instance segmentation.
    results = []
    for i, ann in enumerate(a for a in gt["annotations"] if not a.get("iscrowd")):
        image = next(im for im in gt["images"] if im["id"] == ann["image_id"])
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        mask = np.zeros((image["height"], image["width"]), np.uint8)
        mask[y:y + max(1, h // 4), x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "segmentation": rle, "bbox": list(ann["bbox"]),
                        "score": 1.0 - 1e-4 * i})
    got = evaluation.evaluate_predictions(lambda setting: Predictions(instances=results),
                                          config.evaluation.tasks, ["gzsl"])
    assert set(got) == {("instance", "gzsl"), ("detection", "gzsl")}
    for task, iou_type in (("instance", "segm"), ("detection", "bbox")):
        reference = evaluate_instance_coco(gt, results, ctx.label_split, iou_type=iou_type,
                                           backend="pycocotools")
        assert got[(task, "gzsl")].task == reference.task == task
        assert got[(task, "gzsl")].per_class == reference.per_class
    detection, instance = got[("detection", "gzsl")], got[("instance", "gzsl")]
    assert detection.hm["ap50"] == 1.0 and detection.hm["recall50"] == 1.0
    assert instance.hm["ap50"] < 0.5


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_runs(tiny_data, tmp_path_factory) -> dict[str, Any]:
    from zeroseg.platform.pipeline.runner import run_pipeline

    work = tmp_path_factory.mktemp("pipeline") / "work"
    config = pipeline_config_from_dict(tiny_config(tiny_data, work))
    lines: list[str] = []
    pipeline = Pipeline(config, progress=lines.append)
    outcomes = run_pipeline(pipeline)
    return {"pipeline": pipeline, "outcomes": {o.method: o for o in outcomes}, "lines": lines,
            "work": work, "data": tiny_data}


def _store(runs):
    from zeroseg.platform.store import open_store

    return open_store(runs["pipeline"].store_url)


def test_every_run_is_stored_with_all_tasks_settings_and_protocols(pipeline_runs):
    with _store(pipeline_runs) as store:
        stored = {r["method"]: r for r in store.runs(full=True)}
        assert set(stored) == {"supervised", "seen-only", "projection", "pading"}
        for method, run in stored.items():
            rows = store.run(run["id"])["metrics"]
            keys = {(m["eval_split"], m["task"], m["setting"]) for m in rows}
            splits = ["test"] if method == "supervised" else ["test", "val"]
            want = {(s, t, g) for s in splits for t in ("semantic", "instance", "panoptic")
                    for g in ("gzsl", "zsl")}
            assert keys == want, method
            assert run["status"] == "finished" and run["seed"] == 0
            assert run["config"]["method"] == method and run["config_hash"]
            assert run["dataset_fingerprint"].startswith("sha256:")
            assert run["code_version"]
            per_class = [m for m in rows if m["subset"] == "class"]
            assert per_class and all(m["class_name"] for m in per_class)


def test_seen_only_scores_exactly_zero_on_unseen_classes(pipeline_runs):
    outcome = pipeline_runs["outcomes"]["seen-only"]
    for protocol, pr in outcome.protocols.items():
        for (task, setting), result in pr.evaluations.items():
            for metric, value in result.unseen.items():
                if value is not None and not metric.startswith("sq"):
                    assert value == 0.0, (protocol, task, setting, metric)


def test_leakage_audit_is_recorded_and_checked(pipeline_runs):
    with _store(pipeline_runs) as store:
        stored = {r["method"]: r for r in store.runs(full=True)}
    audit = stored["pading"]["leakage_audit"]
    assert audit["passed"] is True
    assert audit["unseen_instances_in_training"] == 0
    assert audit["protocol"] == "drop-images"
    assert audit["images_kept"] < audit["images_total"]
    assert "text only" in audit["text_encoder_pretraining"] or \
        "no text model" in audit["text_encoder_pretraining"]
    test, val = audit["protocols"]["test"], audit["protocols"]["validation"]
    assert val["images_kept"] < test["images_kept"]  # held-out seen classes dropped too
    assert set(test["excluded_from_training"]) < set(val["excluded_from_training"])
    assert stored["supervised"]["leakage_audit"]["passed"] is False


def test_artifacts_exist_and_synthetic_features_have_the_embedding_width(pipeline_runs):
    with _store(pipeline_runs) as store:
        run = next(r for r in store.runs(full=True) if r["method"] == "pading")
    art = run["artifacts"]
    # keep_predictions "sample": the semantic PNGs of a few images with unseen classes, for
    # the dashboard; nothing else is written
    from zeroseg.platform.pipeline.evaluate import SAMPLE_IMAGES

    assert not Path(art["predictions"]["test"], "instances_results.json").exists()
    for split in ("test", "val"):
        sample = sorted(Path(art["predictions"][split], "semantic").glob("*.png"))
        assert 0 < len(sample) <= SAMPLE_IMAGES
    layout = pipeline_runs["pipeline"].context("test", "zero-shot").eval_layout
    unseen = {c.png_label for c in pipeline_runs["pipeline"].split.unseen}
    for png in sorted(Path(art["predictions"]["test"], "semantic").glob("*.png")):
        gt = np.asarray(Image.open(layout.semantic_pngs / png.name))
        assert unseen & set(np.unique(gt).tolist()), png.name
    fakes = np.load(art["synthetic_unseen"])
    ctx = pipeline_runs["pipeline"].context("test", "zero-shot")
    assert fakes["embeddings"].shape[1] == ctx.embed_dim
    unseen = {c.index for c in ctx.label_split.unseen}
    assert set(fakes["class_index"].tolist()) == unseen
    assert Path(art["method"]["test"]["generator"]).is_file()
    # generator fidelity: the validation protocol only, its held-out classes
    fid = art["fidelity"]["val"]
    assert set(art["fidelity"]) == {"val"}
    held_out = [c.name for c in pipeline_runs["pipeline"].split.classes if c.val_unseen]
    assert sorted(r["name"] for r in fid["per_class"]) == sorted(held_out)
    assert fid["real_rows"] == sum(r["real"] for r in fid["per_class"]) > 0
    assert 0 <= fid["ncm_accuracy"] <= 1 and fid["mmd"] > 0 and fid["variance_ratio"] > 0
    with _store(pipeline_runs) as store:
        curves = {c["name"] for c in store.run(run["id"])["curves"]}
    assert {"generator/mmd_sqrt_per_class", "val/generator/mmd_sqrt_per_class",
            "generator/loss", "classifier/loss"} <= curves


def test_the_held_out_embeddings_are_the_best_covering_queries(pipeline_runs):
    """The validation protocol's real held-out embeddings: per image and held-out class, the
    query whose mask has the highest Dice with the class's pixels."""
    pipeline = pipeline_runs["pipeline"]
    evaluation = pipeline.context("validation", "zero-shot").evaluation()
    x, y = evaluation.unseen_query_embeddings()
    held = {c.index for c in evaluation.split.unseen}
    assert len(x) == len(y) > 0 and set(y.tolist()) <= held
    lut = evaluation.split.png_lut()
    chunk = next(iter(evaluation.chunks()))
    info, emb, probs = chunk.infos[0], chunk.embeddings[0], chunk.mask_probs[0]
    gt = lut[evaluation.semantic_gt(info.id)]
    present = sorted(set(np.unique(gt).tolist()) & held)
    for c in present:
        region = torch.as_tensor(gt == c)
        if int(region.sum()) < 16:
            continue
        dice = [float(2 * (p * region).sum() / (p.sum() + region.sum())) for p in probs]
        best = emb[int(np.argmax(dice))].numpy()
        assert any(np.array_equal(best, row) for row in x[y == c])


def test_held_out_regions_from_panoptic_or_instance_ground_truth(pipeline_runs):
    """A panoptic or instance benchmark has no semantic PNGs: the held-out regions come from
    its panoptic segments (identical to the semantic PNGs, which the synthetic benchmark
    derives from them) or its instance masks (the same pixels for things; stuff has none)."""
    from zeroseg.platform.pipeline.evaluate import CachedEvaluation

    class Forced(CachedEvaluation):
        source = "semantic"

        def region_source(self) -> str:
            return self.source

    evaluation = pipeline_runs["pipeline"].context("validation", "zero-shot").evaluation()
    assert evaluation.region_source() == "semantic"
    held = np.array(sorted(c.index for c in evaluation.split.unseen))
    things = {c.index for c in evaluation.split.unseen if c.isthing}
    assert things and set(held.tolist()) - things, "the tiny split holds out things and stuff"
    forced = {src: Forced(evaluation.cache, evaluation.layout, evaluation.split)
              for src in ("panoptic", "instances", "none")}
    for src, ev in forced.items():
        ev.source = src
    compared = {"panoptic": 0, "instances": 0}
    for image_id in list(evaluation.listing.images)[:40]:
        reference = evaluation.class_regions(image_id, held)
        panoptic = forced["panoptic"].class_regions(image_id, held)
        instances = forced["instances"].class_regions(image_id, held)
        assert sorted(panoptic) == sorted(reference)
        assert sorted(instances) == sorted(c for c in reference if c in things)
        for c, region in reference.items():
            assert np.array_equal(panoptic[c], region)
            compared["panoptic"] += 1
            if c in things:
                assert np.array_equal(instances[c], region)
                compared["instances"] += 1
        assert forced["none"].class_regions(image_id, held) == {}
    assert compared["panoptic"] > compared["instances"] > 0
    x, y = evaluation.unseen_query_embeddings()
    xp, yp = forced["panoptic"].unseen_query_embeddings()
    assert np.array_equal(x, xp) and np.array_equal(y, yp)
    xi, yi = forced["instances"].unseen_query_embeddings()
    keep = np.isin(y, sorted(things))
    assert np.array_equal(xi, x[keep]) and np.array_equal(yi, y[keep])
    xn, yn = forced["none"].unseen_query_embeddings()
    assert xn.shape == (0, x.shape[1]) and yn.shape == (0,)


def test_second_run_reuses_segmenters_and_caches(pipeline_runs):
    from zeroseg.platform.pipeline.runner import run_one

    config = pipeline_runs["pipeline"].config
    lines: list[str] = []
    again = Pipeline(config, progress=lines.append)
    first = pipeline_runs["outcomes"]["projection"]
    outcome = run_one(again, "projection", 0, record=False)
    assert any("reusing" in line for line in lines), lines
    assert any("features train_all" in line and "reused" in line for line in lines), lines
    assert not any("training" in line for line in lines), lines
    # same config, same seed, same machine: the same numbers, exactly
    for protocol, pr in outcome.protocols.items():
        for key, result in pr.evaluations.items():
            assert result.to_json()["per_class"] == \
                first.protocols[protocol].evaluations[key].to_json()["per_class"], key


def test_in_memory_evaluation_equals_the_file_based_one(pipeline_runs, tmp_path):
    """Runs score in memory; writing every prediction file and evaluating the files with the
    `zeroseg eval` functions gives the same per-class numbers, every task and setting."""
    from zeroseg.methods.segmenter.inference import predict_dataset
    from zeroseg.platform.evaluation import (
        evaluate_instance,
        evaluate_panoptic,
        evaluate_semantic,
    )
    from zeroseg.platform.pipeline.runner import evaluate_classifier, setting_classifier

    pipeline = pipeline_runs["pipeline"]
    outcome = pipeline_runs["outcomes"]["projection"]
    evaluators = {"semantic": evaluate_semantic, "instance": evaluate_instance,
                  "panoptic": evaluate_panoptic}
    inference = pipeline.config.evaluation.inference
    for protocol in ("test", "validation"):
        ctx = pipeline.context(protocol, "zero-shot")
        classifier = outcome.protocols[protocol].output.classifier
        memory = evaluate_classifier(ctx, classifier, tmp_path / protocol / "kept",
                                     list(evaluators), ["gzsl", "zsl"], inference, keep="all")
        for setting in ("gzsl", "zsl"):
            paths = predict_dataset(ctx.eval_cache.iter_images(),
                                    setting_classifier(classifier, ctx.label_split, setting),
                                    ctx.eval_layout, ctx.label_split,
                                    tmp_path / protocol / setting, list(evaluators),
                                    config=inference)
            for task, evaluate in evaluators.items():
                files = evaluate(ctx.eval_layout, ctx.label_split, paths[task], setting)
                assert memory[(task, setting)].to_json()["per_class"] == \
                    files.to_json()["per_class"], (protocol, task, setting)
                # keep="all" wrote the same prediction files
                kept = tmp_path / protocol / "kept" / setting / Path(paths[task]).name
                again = evaluate(ctx.eval_layout, ctx.label_split, kept, setting)
                assert again.to_json()["per_class"] == files.to_json()["per_class"]
        # the sweeps' per-epoch objective is the same semantic GZSL evaluation
        fast = ctx.evaluation().semantic_miou(classifier)
        assert fast.to_json()["per_class"] == \
            memory[("semantic", "gzsl")].to_json()["per_class"]


def test_stop_trial_from_an_epoch_hook_records_a_stopped_run(pipeline_runs):
    from zeroseg.platform.pipeline.runner import run_one

    pipeline = pipeline_runs["pipeline"]
    calls = []

    def on_epoch(protocol, epoch, classifier):
        calls.append((protocol, epoch))
        if epoch == 2:
            raise StopTrial()

    outcome = run_one(pipeline, "pading", 1, protocols=["validation"], epochs=4,
                      on_epoch=on_epoch)
    assert calls == [("validation", 1), ("validation", 2)]
    assert outcome.status == "stopped" and outcome.run_id is not None
    with _store(pipeline_runs) as store:
        assert store.run(outcome.run_id)["status"] == "stopped"


def test_run_command_prints_the_table(pipeline_runs, tmp_path, capsys):
    import yaml

    from zeroseg.platform.cli import main

    doc = to_dict(pipeline_runs["pipeline"].config)
    doc["methods"] = ["seen-only"]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "GZSL, test split" in out and "Seen-only" in out and "ZSS mIoU" in out
    assert "Generator fidelity" not in out  # no generator, no diagnostics
    doc["methods"] = ["pading"]
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path)]) == 0
    captured = capsys.readouterr()
    assert "Generator fidelity on the validation protocol" in captured.out
    assert "fidelity (validation, 5 held-out classes" in captured.err
    assert main(["results", "table", "--store", pipeline_runs["pipeline"].store_url,
                 "--methods", "pading"]) == 0
    assert "Generator fidelity on the validation protocol" in capsys.readouterr().out
    assert main(["run", str(path), "--set", "params.pading.tau=-1"]) == 2
    assert "tau must be > 0" in capsys.readouterr().err


def test_a_finished_run_is_reused_not_stored_again_and_force_replaces_it(pipeline_runs,
                                                                        tmp_path, capsys):
    import yaml

    from zeroseg.platform.cli import main

    doc = to_dict(pipeline_runs["pipeline"].config)
    doc["methods"], doc["seeds"] = ["projection"], [0]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    with _store(pipeline_runs) as store:
        before = {r["uid"] for r in store.runs(superseded=True)}
        stored = next(r for r in store.runs() if r["method"] == "projection" and r["seed"] == 0)
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"projection seed 0: already stored as run {stored['id']}" in err and "reused" in err
    assert "Projection" in out  # the table, from the stored run
    with _store(pipeline_runs) as store:
        assert {r["uid"] for r in store.runs(superseded=True)} == before  # nothing new

    assert main(["run", str(path), "--force"]) == 0
    err = capsys.readouterr().err
    assert "projection seed 0: finished in" in err
    with _store(pipeline_runs) as store:
        after = {r["uid"] for r in store.runs(superseded=True)}
        again = next(r for r in store.runs() if r["method"] == "projection" and r["seed"] == 0)
        assert len(after) == len(before) and stored["uid"] not in after  # replaced, not added
        assert again["uid"] in after
        metrics = {(m["eval_split"], m["task"], m["setting"], m["subset"], m["class_name"],
                    m["metric"]): m["value"] for m in store.run(again["id"])["metrics"]}
    first = pipeline_runs["outcomes"]["projection"].record.metrics
    # the same numbers: same config, seed and machine
    assert metrics == {(m.eval_split, m.task, m.setting, m.subset, m.class_name, m.metric):
                       m.value for m in first}


@pytest.mark.ray
def test_generator_trains_on_two_deepspeed_workers(pipeline_runs):
    """method_training.workers = 2: PADing's generator on Ray Train + DeepSpeed (ZeRO 2)."""
    import dataclasses

    from zeroseg.platform.pipeline.runner import run_one
    from zeroseg.platform.training.config import MethodTrainingConfig

    pipeline = pipeline_runs["pipeline"]
    config = dataclasses.replace(pipeline.config, method_training=MethodTrainingConfig(
        workers=2, zero_stage=2))
    outcome = run_one(pipeline.derive(config), "pading", 0, protocols=["test"], record=False)
    assert outcome.status == "finished"
    pr = outcome.protocols["test"]
    assert Path(pr.output.artifacts["generator"]).is_file()
    assert ("semantic", "gzsl") in pr.evaluations
    # trained on 2 ranks with different batches: not the one-process generator
    single = pipeline_runs["outcomes"]["pading"].protocols["test"]
    from zeroseg.methods.pading import load_generator

    a = load_generator(pr.output.artifacts["generator"]).net.state_dict()
    b = load_generator(single.output.artifacts["generator"]).net.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert outcome.record.config["method_training"]["workers"] == 2


@pytest.mark.ray
def test_run_many_runs_side_by_side_on_ray_and_stores_every_run(pipeline_runs):
    """Runs spread over Ray tasks give the numbers of a run in this process, each is stored by
    the driver as it ends, and a failed one is stored as failed and raised after the others."""
    from zeroseg.platform.pipeline.runner import RunJob, run_many

    pipeline = pipeline_runs["pipeline"]
    config = pipeline.config
    # 30 is not divisible by the 8 heads: the generator refuses it when the run builds it.
    broken = pipeline_config_from_dict(tiny_config(
        pipeline_runs["data"], pipeline_runs["work"], **{"params.pading.hidden_dim": 30}))
    jobs = [RunJob(config, "projection", 0), RunJob(config, "seen-only", 3),
            RunJob(broken, "pading", 0)]
    ended: list[Any] = []
    with pytest.raises(ZerosegError, match="divisible by heads"):
        run_many(pipeline, jobs, on_run=ended.append, force=True)  # projection 0: stored
    assert sorted((o.method, o.seed, o.status) for o in ended) == [
        ("pading", 0, "failed"), ("projection", 0, "finished"), ("seen-only", 3, "finished")]
    first = pipeline_runs["outcomes"]["projection"]
    projection = next(o for o in ended if o.method == "projection")
    for protocol, pr in projection.protocols.items():
        for key, result in pr.evaluations.items():
            assert result.to_json()["per_class"] == \
                first.protocols[protocol].evaluations[key].to_json()["per_class"], key
    with _store(pipeline_runs) as store:
        for outcome in ended:
            run = store.run(outcome.run_id)
            assert (run["method"], run["seed"], run["status"]) == \
                (outcome.method, outcome.seed, outcome.status)
        assert "divisible by heads" in store.run(
            next(o.run_id for o in ended if o.status == "failed"))["error"]
        count = store.count_runs()
    # Without force the finished ones come back from the store: nothing runs, nothing is stored.
    again = run_many(pipeline, jobs[:2])
    ids = {(o.method, o.seed): o.run_id for o in ended}
    assert [o.reused for o in again] == [True, True]
    assert [o.run_id for o in again] == [ids[("projection", 0)], ids[("seen-only", 3)]]
    with _store(pipeline_runs) as store:
        assert store.count_runs() == count
