"""The command line: the contract other tools rely on, one-line errors, no partial output."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroseg.platform.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]
ZEROSEG = Path(sys.executable).with_name("zeroseg")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--size", "tiny", "--seed", "3", "--out", str(root),
                 "--quiet"]) == 0
    return root


def perfect_predictions(root: Path, tmp: Path) -> dict[str, Path]:
    """The ground truth in the three prediction formats (every metric must be exactly 1)."""
    sem = tmp / "sem"
    shutil.copytree(root / "stuff_val", sem)
    pan = tmp / "pan"
    shutil.copytree(root / "panoptic_val", pan)
    gt = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    (pan / "pred.json").write_text(json.dumps({"annotations": gt["annotations"]}))
    inst = json.loads((root / "annotations" / "instances_val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 1.0}
               for a in inst["annotations"] if not a["iscrowd"]]
    res = tmp / "inst.json"
    res.write_text(json.dumps(results))
    return {"semantic": sem, "panoptic": pan, "instance": res}


# -- help --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["data"], ["data", "synth"], ["data", "list"],
                                  ["data", "filter"], ["embed"], ["eval"], ["demo"]])
def test_every_command_has_help(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: zeroseg" in capsys.readouterr().out


def test_console_script_runs_and_reports_errors_in_one_line(tmp_path):
    proc = subprocess.run([str(ZEROSEG), "eval", "semantic", "--gt", str(tmp_path / "nowhere"),
                           "--split", "val", "--pred", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == EXIT_USER_ERROR
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeroseg: error: ")
    assert "nowhere" in lines[0]


# -- data --------------------------------------------------------------------------------------
def test_data_list_prints_every_split_with_counts_and_protocol(capsys):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0
    for name, seen, unseen in [("coco-panoptic/zsp-119-14", 119, 14),
                               ("coco-stuff/spnet-156-15", 156, 15),
                               ("coco-stuff/cap2seg-15", 156, 15),
                               ("coco2014/zsi-48-17", 48, 17), ("coco2014/zsi-65-15", 65, 15),
                               ("voc12/spnet-15-5", 15, 5), ("voc12/zs3-2", 19, 2),
                               ("voc12/zs3-10", 11, 10), ("synthetic/default", 25, 7)]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        cells = line.split()
        assert str(seen) in cells and str(unseen) in cells, line
        assert any(p in cells for p in ("drop-images", "ignore-pixels")), line
    code, out, _ = run(capsys, "data", "list", "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= {"voc12/zs3-4", "voc12/zs3-6", "voc12/zs3-8"}
    assert all(r["source"] for r in rows)


def test_data_synth_refuses_to_overwrite_and_leaves_files_untouched(capsys, dataset):
    before = tree_digest(dataset)
    code, _, err = run(capsys, "data", "synth", "--size", "tiny", "--seed", "4", "--out",
                       str(dataset), "--quiet")
    assert code == EXIT_USER_ERROR
    assert str(dataset) in err and len(err.strip().splitlines()) == 1
    assert tree_digest(dataset) == before


def test_data_synth_unknown_size_is_an_argument_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--size", "huge", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_data_filter_reports_counts_and_writes_filtered_json(capsys, dataset, tmp_path):
    code, out, _ = run(capsys, "data", "filter", "--gt", str(dataset), "--out",
                       str(tmp_path / "f"))
    assert code == 0
    report = json.loads(out)
    assert report["protocol"] == "drop-images"
    assert report["images_kept"] + report["images_dropped"] == report["images_total"] == 64
    assert report["images_dropped"] > 0
    kept = json.loads((tmp_path / "f" / "instances_train.json").read_text())
    assert len(kept["images"]) == report["images_kept"]


def test_unknown_benchmark_name_is_one_line(capsys):
    code, _, err = run(capsys, "embed", "--provider", "attributes", "--benchmark", "coco/nope")
    assert code == EXIT_USER_ERROR
    assert "coco/nope" in err and len(err.strip().splitlines()) == 1


# -- eval --------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,metric", [("semantic", "iou"), ("panoptic", "pq"),
                                         ("instance", "ap50")])
def test_eval_perfect_prediction_scores_one_with_the_json_contract(capsys, dataset, tmp_path,
                                                                   task, metric):
    preds = perfect_predictions(dataset, tmp_path)
    code, out, _ = run(capsys, "eval", task, "--gt", str(dataset), "--split", "val", "--pred",
                       str(preds[task]), "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"per_class", "seen", "unseen", "hm"}
    assert result["seen"][metric] == pytest.approx(1.0)
    assert result["unseen"][metric] == pytest.approx(1.0)
    assert result["hm"][metric] == pytest.approx(1.0)
    assert all(0.0 <= v <= 1.0 for per in result["per_class"].values() for v in per.values()
               if v is not None)
    code, out, _ = run(capsys, "eval", task, "--gt", str(dataset), "--split", "val", "--pred",
                       str(preds[task]), "--setting", "zsl")
    assert code == 0 and "unseen" in out


def test_eval_semantic_counts_a_relabelled_class_exactly(capsys, dataset, tmp_path):
    # Relabel every pixel of one unseen class as a seen class: that unseen class gets IoU 0,
    # the seen class loses exactly those pixels to false positives.
    from zeroseg.platform.data.synthetic.generate import load_classes_json

    split = load_classes_json(dataset / "annotations" / "classes.json")
    unseen, seen = split.unseen[0], split.seen[0]
    preds = perfect_predictions(dataset, tmp_path)["semantic"]
    moved = tp_seen = 0
    for png in preds.glob("*.png"):
        arr = np.array(Image.open(png))
        hit = arr == unseen.png_label
        moved += int(hit.sum())
        tp_seen += int((arr == seen.png_label).sum())
        arr[hit] = seen.png_label
        Image.fromarray(arr).save(png)
    assert moved > 0
    code, out, _ = run(capsys, "eval", "semantic", "--gt", str(dataset), "--split", "val",
                       "--pred", str(preds), "--json")
    per = json.loads(out)["per_class"]
    assert per[unseen.name]["iou"] == 0.0
    assert per[seen.name]["iou"] == pytest.approx(tp_seen / (tp_seen + moved))


def test_eval_bad_inputs_are_one_line_errors(capsys, dataset, tmp_path):
    preds = perfect_predictions(dataset, tmp_path)
    # malformed results json
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    code, _, err = run(capsys, "eval", "instance", "--gt", str(dataset), "--split", "val",
                       "--pred", str(bad))
    assert code == EXIT_USER_ERROR and "bad.json" in err and len(err.strip().splitlines()) == 1
    # a missing prediction PNG
    victim = sorted(preds["semantic"].glob("*.png"))[0]
    victim.unlink()
    code, _, err = run(capsys, "eval", "semantic", "--gt", str(dataset), "--split", "val",
                       "--pred", str(preds["semantic"]))
    assert code == EXIT_USER_ERROR and victim.name in err
    # a panoptic PNG whose ids disagree with its json
    pan_png = sorted(preds["panoptic"].glob("*.png"))[0]
    Image.fromarray(np.full((128, 128, 3), 7, dtype=np.uint8)).save(pan_png)
    code, _, err = run(capsys, "eval", "panoptic", "--gt", str(dataset), "--split", "val",
                       "--pred", str(preds["panoptic"]))
    assert code == EXIT_USER_ERROR and pan_png.name in err
    # an unknown dataset split
    code, _, err = run(capsys, "eval", "semantic", "--gt", str(dataset), "--split", "test",
                       "--pred", str(preds["semantic"]))
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1


# -- embeddings --------------------------------------------------------------------------------
def test_embed_attributes_writes_matrix(capsys, dataset, tmp_path):
    out = tmp_path / "emb.npy"
    code, text, _ = run(capsys, "embed", "--provider", "attributes", "--gt", str(dataset),
                        "--set", "dim=16", "--cache-dir", str(tmp_path / "cache"), "--out",
                        str(out))
    assert code == 0 and "nearest" in text
    assert np.load(out).shape == (32, 16)


def test_embed_file_with_nan_is_a_one_line_error_and_writes_nothing(capsys, tmp_path):
    vectors = np.random.default_rng(0).normal(size=(21, 300))
    vectors[3, 7] = np.nan
    path = tmp_path / "voc.csv"
    np.savetxt(path, vectors, delimiter=",")
    out = tmp_path / "emb.npy"
    code, _, err = run(capsys, "embed", "--provider", "file", "--benchmark", "voc12/zs3-2",
                       "--set", f"path={path}", "--set", "layout=rows_by_id", "--cache-dir",
                       str(tmp_path / "cache"), "--out", str(out))
    assert code == EXIT_USER_ERROR
    assert "voc.csv" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# -- the README --------------------------------------------------------------------------------
def _readme_commands() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if "zeroseg " in line:
                commands.append(line[line.index("zeroseg "):])
    return commands


def test_every_readme_command_parses_and_names_files_that_exist():
    """Each `zeroseg ...` line of the README is a valid command line; the configs and search
    spaces it names ship with the repository (what they do is covered by the tests of each
    command and by the main job)."""
    import shlex

    from zeroseg.platform.cli import build_parser

    repo = Path(__file__).resolve().parents[1]
    commands = _readme_commands()
    assert len(commands) >= 25
    parser = build_parser()
    subcommands = set()
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of saying no
            raise AssertionError(f"README command does not parse: {command}") from exc
        subcommands.add(argv[0])
        for arg in argv:
            if arg.startswith(("configs/", "search_spaces/")):
                assert (repo / arg).is_file(), f"{command}: {arg} is not in the repository"
    assert {"data", "embed", "eval", "train", "extract", "run", "methods", "sweep", "reproduce",
            "results", "dashboard", "demo"} <= subcommands
