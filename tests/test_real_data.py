"""Every paper benchmark on real-format trees (tests/realtrees.py: real COCO pixels and
segments, non-square images in several sizes): its own annotation source only, categories
outside the split counted, aspect-preserving resize, predictions at each image's original
size, per-class results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import realtrees
from PIL import Image

from zeroseg.platform.data.layout import dataset_layout
from zeroseg.platform.data.registry import get_split
from zeroseg.platform.data.sources import (
    benchmark_sources,
    list_images,
    require_sources,
    target_reader,
)
from zeroseg.platform.errors import DataError

# benchmark -> (tree builder, train split, eval split)
TREES = {
    "coco-stuff/spnet-156-15": (realtrees.coco_stuff_tree, "train2017", "val2017"),
    "coco2014/zsi-48-17": (realtrees.coco2014_tree, "train2014", "val2014"),
    "coco-panoptic/zsp-119-14": (realtrees.coco_panoptic_tree, "train2017", "val2017"),
    "voc12/spnet-15-5": (realtrees.voc_tree, "train", "val"),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, (build, _, _) in TREES.items():
        root = tmp_path_factory.mktemp(name.replace("/", "_"))
        if name.startswith("coco-panoptic"):
            unseen = {c.id for c in get_split(name).unseen}
            build(root, void_categories=unseen)
        else:
            build(root)
        out[name] = root
    return out


@pytest.mark.parametrize("benchmark", list(TREES))
def test_each_benchmark_lists_and_reads_its_own_source(trees, benchmark):
    split = get_split(benchmark)
    _, train, _ = TREES[benchmark]
    layout = dataset_layout(trees[benchmark], train, split.dataset)
    require_sources(layout, split, "training")
    images = list_images(layout, benchmark_sources(split))
    assert len(images) == len(realtrees.VIEWS["train"])
    assert len({(i.height, i.width) for i in images.values()}) > 3  # several sizes
    assert any(i.height > i.width for i in images.values())  # portrait too
    reader = target_reader(layout, split)
    for image_id, info in images.items():
        masks, cats = reader.targets(image_id)
        assert masks.shape[1:] == (info.height, info.width)
        assert set(cats.tolist()) <= {c.id for c in split.classes}
    if benchmark.startswith("coco2014"):
        # the 80-category json under a 65-class split: the 15 others are counted, not fatal
        assert reader.outside and all(k.startswith("instances category") for k in reader.outside)
    if benchmark.startswith("voc12"):  # background (0) is no class of the 20-class SPNet split
        assert "semantic label 0" in reader.outside


def test_a_benchmark_never_opens_files_it_does_not_need(trees, tmp_path):
    """A COCO-Stuff split reads its PNGs only: a broken instances json beside them is not read."""
    from zeroseg.platform.data.leakage import filter_training

    split = get_split("coco-stuff/spnet-156-15")
    layout = dataset_layout(trees["coco-stuff/spnet-156-15"], "train2017", split.dataset)
    layout.annotations.mkdir(exist_ok=True)
    layout.instances_json.write_text("{not json")
    try:
        result = filter_training(layout, split)
    finally:
        layout.instances_json.unlink()
    assert result.sources == ["semantic"]
    assert result.images_kept == result.images_total == len(realtrees.VIEWS["train"])
    assert result.unseen_pixels_ignored > 0  # ignore-pixels: tree, sky, ... are unseen there


def test_missing_source_is_one_line_naming_the_file(trees, tmp_path):
    split = get_split("coco2014/zsi-65-15")
    layout = dataset_layout(tmp_path, "train2014", split.dataset)
    with pytest.raises(DataError, match=r"instances_train2014\.json: COCO instances json not "
                                        r"found; coco2014/zsi-65-15 \(training\)"):
        require_sources(layout, split, "training")


def test_label_png_disagreeing_with_its_image_is_an_error(trees, tmp_path):
    import shutil

    from zeroseg.methods.segmenter.data import SegmentationDataset

    split = get_split("coco-stuff/spnet-156-15")
    root = tmp_path / "stuff"
    shutil.copytree(trees["coco-stuff/spnet-156-15"], root)
    layout = dataset_layout(root, "train2017", split.dataset)
    first = sorted(layout.images.glob("*.jpg"))[0]
    Image.open(first).resize((50, 40)).save(first)
    ds = SegmentationDataset(layout, [c.id for c in split.seen], image_size=64,
                             targets=target_reader(layout, split))
    with pytest.raises(DataError, match=f"{first.name}: image is 50x40, its annotation says"):
        ds[0]


def _train_config(root: Path, benchmark: str, run_dir: Path) -> dict:
    _, train, val = TREES[benchmark]
    return {
        "data": {"root": str(root), "benchmark": benchmark, "train_split": train,
                 "eval_split": val, "scale_range": [0.5, 1.5], "augment": True},
        "model": {"size": "tiny", "image_size": 64, "resize": "shortest-edge",
                  "test_size": 64, "max_size": 112},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1},
        "distributed": {"workers": 0},
        "output": {"run_dir": str(run_dir)},
    }


@pytest.mark.parametrize("benchmark", list(TREES))
def test_segmenter_trains_and_predicts_at_original_sizes(trees, tmp_path, benchmark):
    from zeroseg.platform.training.config import train_config_from_dict
    from zeroseg.platform.training.ray_runner import run_training

    split = get_split(benchmark)
    config = train_config_from_dict(_train_config(trees[benchmark], benchmark,
                                                  tmp_path / "run"))
    result = run_training(config)
    logs = [r for r in result.log if r.get("event") == "log"]
    assert logs and all(r["cpu_share"] >= 0 and r["load_per_cpu"] >= 0 for r in logs)
    task = split.tasks[0]
    metrics = result.results["metrics"]
    assert set(metrics) == {task}
    assert metrics[task]["per_class"]  # per-class rows of the benchmark's classes
    _, _, val = TREES[benchmark]
    layout = dataset_layout(trees[benchmark], val, split.dataset)
    images = list_images(layout, benchmark_sources(split))
    preds = tmp_path / "run" / "predictions"
    for info in images.values():
        stem = Path(info.file_name).stem
        if task == "semantic":
            with Image.open(preds / "semantic" / f"{stem}.png") as im:
                assert im.size == (info.width, info.height)
        if task == "panoptic":
            with Image.open(preds / "panoptic" / f"{stem}.png") as im:
                assert im.size == (info.width, info.height)
    if task == "instance":
        detections = json.loads((preds / "instances_results.json").read_text())
        assert detections
        for d in detections:
            info = images[d["image_id"]]
            assert d["segmentation"]["size"] == [info.height, info.width]
    leakage = result.results["leakage"]
    assert leakage["sources"] == [{"panoptic": "panoptic", "instance": "instances",
                                   "semantic": "semantic"}[task]]
    if benchmark.startswith("coco2014"):
        assert any(k.startswith("instances category") for k in leakage["outside_split"])


# -- `zeroseg run configs/<benchmark>.yaml --smoke --set data.root=DIR` -----------------------
SMOKE = {  # config -> tree (benchmark of TREES)
    "coco_stuff_spnet_156_15.yaml": "coco-stuff/spnet-156-15",
    "coco_panoptic_zsp_119_14.yaml": "coco-panoptic/zsp-119-14",
    "coco2014_zsi_48_17.yaml": "coco2014/zsi-48-17",
    "coco2014_zsi_65_15.yaml": "coco2014/zsi-48-17",  # the same 80-category tree
    "voc12_spnet_15_5.yaml": "voc12/spnet-15-5",
}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("config", sorted(SMOKE))
def test_smoke_shrinks_every_size_of_a_config_but_keeps_its_architecture(config):
    """--smoke: the segmenter's and a model method's (ZSI's) steps, epochs, image sizes and
    workers shrink; the architecture (R50 / R101) and the methods stay; a GPU config runs on
    this CPU."""
    from zeroseg.platform.pipeline.config import load_pipeline_config
    from zeroseg.platform.pipeline.smoke import SIZE_KNOBS, smoke_config

    real = load_pipeline_config(CONFIGS / config)
    smoke = smoke_config(real)
    assert smoke.methods == real.methods and smoke.smoke and smoke.seeds == real.seeds[:1]
    assert smoke.segmenter.model.size == real.segmenter.model.size
    assert smoke.segmenter.train.steps <= 4 and smoke.segmenter.distributed.workers <= 1
    assert smoke.method_training.workers == 1 and not smoke.method_training.use_gpu
    for name in real.methods:
        method = smoke.method_config(name)
        if method is None or not hasattr(method, "min_size"):
            continue
        before = real.method_config(name)
        assert method.recipe == before.recipe  # R101 stays R101
        for knob, bound in SIZE_KNOBS.items():
            assert method.resolved(knob) == min(before.resolved(knob), bound)
        assert method.epochs <= 5 < before.epochs


@pytest.mark.ray
@pytest.mark.parametrize("config,extra", [
    # the default suite: every stage of a real benchmark config, with the tiny segmenter
    ("coco_stuff_spnet_156_15.yaml", ["segmenter.model.size=tiny", 'evaluation.protocols=["test"]',
                                      'methods=["seen-only","projection","pading"]']),
    # make test-slow: each paper benchmark's config as written (R50), both protocols
    *[pytest.param(c, [], marks=pytest.mark.slow) for c in SMOKE]])
def test_smoke_runs_a_benchmark_config_from_data_to_stored_per_class_results(
        trees, tmp_path, monkeypatch, capsys, config, extra):
    from zeroseg.platform.cli import main
    from zeroseg.platform.pipeline.config import load_pipeline_config
    from zeroseg.platform.store import open_store

    monkeypatch.chdir(tmp_path)  # the config's work_dir is relative
    root = trees[SMOKE[config]]
    sets = [a for item in extra for a in ("--set", item)]
    assert main(["run", str(CONFIGS / config), "--smoke", "--set", f"data.root={root}",
                 *sets]) == 0
    out = capsys.readouterr()
    assert "SMOKE RUN" in out.err and "SMOKE RUN" in out.out
    from zeroseg.platform.config import parse_overrides

    real = load_pipeline_config(CONFIGS / config, parse_overrides(extra))
    store = tmp_path / real.work_dir / "smoke" / "results.db"
    split = get_split(real.data.benchmark)
    task = split.tasks[0]
    with open_store(store) as s:
        runs = s.runs(full=True)
        assert {r["method"] for r in runs} == set(real.methods)
        assert all(r["config"]["smoke"] is True for r in runs)
        assert all(r["name"].endswith("-smoke") for r in runs) if "name" in runs[0] else True
        per_class = s.metrics_frame(subset="class", metric_task=task)
    names = {c.name for c in split.classes}
    assert per_class and {r["class_name"] for r in per_class} <= names
    assert not (tmp_path / real.work_dir / "results.db").exists()  # nothing real touched


# -- the README's "Real data" commands, on the trees ---------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_real_data_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Real data"):text.index("## Command line, by task")]
    joined = section.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines()
            if line.strip().startswith("zeroseg ")]


def _gt_as_predictions(benchmark: str, root: Path, preds: Path) -> None:
    """The ground truth of the eval split written as predictions (every score 1)."""
    import shutil

    split = get_split(benchmark)
    _, _, val = TREES[benchmark]
    layout = dataset_layout(root, val, split.dataset)
    if split.tasks == ("instance",):
        gt = json.loads(layout.instances_json.read_text())
        preds.parent.mkdir(parents=True, exist_ok=True)
        preds.write_text(json.dumps([
            {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "segmentation": a["segmentation"], "bbox": a["bbox"]}
            for a in gt["annotations"] if not a["iscrowd"]]))
    elif split.tasks == ("panoptic",):
        shutil.copytree(layout.panoptic_pngs, preds)
        gt = json.loads(layout.panoptic_json.read_text())
        (preds / "predictions.json").write_text(json.dumps({"annotations": gt["annotations"]}))
    else:
        import numpy as np

        preds.mkdir(parents=True)
        known = np.full(256, 255, dtype=np.uint8)  # a prediction holds the split's labels only
        for c in split.classes:
            known[c.png_label] = c.png_label
        for image in list_images(layout, benchmark_sources(split)).values():
            name = f"{Path(image.file_name).stem}.png"
            label = np.asarray(Image.open(layout.semantic_pngs / name))
            Image.fromarray(known[label]).save(preds / name)


def test_every_readme_real_data_command_runs_on_a_real_format_tree(trees, tmp_path, capsys):
    import shlex

    from zeroseg.platform.cli import main

    commands = readme_real_data_commands()
    assert any("--smoke" in c for c in commands)  # step 2: test_smoke_runs_... runs it
    checked = 0
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "run":
            assert argv[1].startswith("configs/") and (CONFIGS.parent / argv[1]).is_file()
            continue  # the smoke tests run these configs
        if argv[:2] == ["data", "convert-context"]:
            src = tmp_path / "mmseg"
            src.mkdir()
            Image.fromarray(np.array([[0, 2], [20, 255]], np.uint8)).save(src / "a.png")
            argv[2:4] = [str(src), str(tmp_path / "context")]
            assert main(argv) == 0, command
            checked += 1
            continue
        benchmark = argv[argv.index("--benchmark") + 1]
        tree = trees[benchmark if benchmark in TREES else "coco2014/zsi-48-17"]
        argv[argv.index("--gt") + 1] = str(tree)
        if "--out" in argv:
            argv[argv.index("--out") + 1] = str(tmp_path / "filtered")
        if "--pred" in argv:
            preds = tmp_path / argv[argv.index("--pred") + 1]
            _gt_as_predictions(benchmark, tree, preds)
            argv[argv.index("--pred") + 1] = str(preds)
        assert main(argv) == 0, command
        out = capsys.readouterr().out
        if argv[0] == "eval":  # the ground truth scores 100 on what it contains
            assert "100.0" in out, (command, out)
        checked += 1
    assert checked == 6


# -- bad input: one line, before any training ----------------------------------------------------
def _copy(trees, benchmark, tmp_path) -> Path:
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(trees[benchmark], root)
    return root


def test_json_of_the_wrong_task_is_one_line_before_training(trees, tmp_path):
    from zeroseg.platform.data.sources import check_dataset

    split = get_split("coco-panoptic/zsp-119-14")
    root = _copy(trees, "coco2014/zsi-48-17", tmp_path)  # an instances json ...
    layout = dataset_layout(root, "train2017", split.dataset)
    layout.annotations.mkdir(exist_ok=True)
    (root / "train2017").symlink_to(root / "train2014")
    (root / "panoptic_train2017").mkdir()
    layout.panoptic_json.write_text((root / "annotations" / "instances_train2014.json")
                                    .read_text())  # ... where the panoptic json belongs
    with pytest.raises(DataError, match=r"panoptic_train2017\.json: annotations have no "
                                        r"'segments_info': expected a COCO panoptic json"):
        check_dataset(layout, split, "training")


def test_json_of_another_year_is_one_line_before_training(trees, tmp_path):
    from zeroseg.platform.data.sources import check_dataset

    split = get_split("coco2014/zsi-48-17")
    root = _copy(trees, "coco2014/zsi-48-17", tmp_path)
    (root / "annotations" / "instances_train2014.json").write_text(
        (root / "annotations" / "instances_val2014.json").read_text())  # val's images
    layout = dataset_layout(root, "train2014", split.dataset)
    with pytest.raises(DataError, match=r"COCO_val2014_000000001001\.jpg: image not found "
                                        r"\(3 of 3 images .* another year or split\?\)"):
        check_dataset(layout, split, "training")


def test_image_size_disagreeing_with_its_annotation_stops_the_run_before_training(
        trees, tmp_path, capsys):
    from zeroseg.platform.cli import main

    root = _copy(trees, "coco-stuff/spnet-156-15", tmp_path)
    first = sorted((root / "val2017").glob("*.jpg"))[0]
    Image.open(first).resize((30, 20)).save(first)
    # the label PNG lists the image at its own size: the image disagrees
    code = main(["run", str(CONFIGS / "coco_stuff_spnet_156_15.yaml"), "--smoke",
                 "--set", f"data.root={root}", "--set", f"work_dir={tmp_path / 'work'}"])
    err = capsys.readouterr().err
    assert code != 0
    assert f"{first.name}: image is 30x20, its annotation says" in err
    assert "training 4 steps" not in err  # nothing was trained
    assert len(err.strip().splitlines()[-1]) < 300


def test_more_targets_than_queries_is_warned_and_counted(trees, tmp_path, caplog):
    from zeroseg.platform.training.config import train_config_from_dict
    from zeroseg.platform.training.ray_runner import run_training

    benchmark = "coco-panoptic/zsp-119-14"
    data = _train_config(trees[benchmark], benchmark, tmp_path / "run")
    data["model"]["num_queries"] = 4  # the real samples have up to 30 segments
    data["train"]["eval"] = False
    with caplog.at_level("WARNING"):
        result = run_training(train_config_from_dict(data))
    beyond = result.results["training"]["targets_beyond_queries"]
    assert beyond["images"] >= 1 and beyond["targets"] >= 1
    assert any("more than the 4 queries" in r.getMessage() for r in caplog.records)


def test_mmseg_pascal_context_pngs_convert_to_zs3_ids_and_read_as_the_benchmark(tmp_path,
                                                                                capsys):
    from zeroseg.platform.cli import main

    root = tmp_path / "VOC2010"
    mmseg = root / "mmseg"
    mmseg.mkdir(parents=True)
    # mmseg numbering: 2 bag, 20 cow, 34 motorbike, 255 void (ZS3: 21, 10, 14)
    label = np.array([[0, 2, 20], [34, 255, 0]], dtype=np.uint8)
    Image.fromarray(label).save(mmseg / "2008_000001.png")
    out = root / "SegmentationClassContext"
    assert main(["data", "convert-context", str(mmseg), str(out)]) == 0
    converted = np.asarray(Image.open(out / "2008_000001.png"))
    assert converted.tolist() == [[0, 21, 10], [14, 255, 0]]
    # ... and the pascal-context benchmark reads the VOC2010 tree
    (root / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "JPEGImages" / "2008_000001.jpg")
    sets = root / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000001\n")
    split = get_split("pascal-context/zs3-2")
    layout = dataset_layout(root, "train", split.dataset)
    images = list_images(layout, benchmark_sources(split))
    masks, cats = target_reader(layout, split).targets(next(iter(images)))
    names = {c.id: c.name for c in split.classes}
    assert sorted(names[c] for c in cats.tolist()) == ["background", "bag", "cow", "motorbike"]
    # a value mmseg never writes is one line naming the file
    Image.fromarray(np.array([[61]], dtype=np.uint8)).save(mmseg / "2008_000002.png")
    assert main(["data", "convert-context", str(mmseg), str(tmp_path / "again")]) != 0
    assert "2008_000002.png: value 61 is no mmsegmentation" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()  # nothing half-written
