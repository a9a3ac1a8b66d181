"""Every registry split has a working default class-vector provider; a provider that does not
cover a split's classes fails up front, in one line naming the provider, the file and the first
class it misses; ZSP's vectors are derived from the shipped COCO-Stuff vectors through COCO's
panoptic merge list."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from zeroseg.platform.cli import EXIT_USER_ERROR, main
from zeroseg.platform.data.registry import get_split, list_splits, split_file
from zeroseg.platform.embeddings import (
    check_embeddings,
    compute_class_embeddings,
    default_embedding_config,
    get_class_embeddings,
    shipped_files,
)
from zeroseg.platform.embeddings.files import VECTORS_DIR
from zeroseg.platform.errors import ConfigError, EmbeddingError, ZerosegError

ZSP = "coco-panoptic/zsp-119-14"
COCOSTUFF_CSV = VECTORS_DIR / "cocostuff_word2vec.csv"
MERGE_TABLE = VECTORS_DIR / "panoptic133_to_cocostuff182.csv"

#: COCO's official panoptic merge list (cocodataset.github.io dataset/panoptic-eval.htm L16-32)
COCO_MERGES = {
    "tree-merged": ["branch", "tree", "bush", "leaves"],
    "fence-merged": ["cage", "fence", "railing"],
    "ceiling-merged": ["ceiling-tile", "ceiling-other"],
    "sky-other-merged": ["clouds", "sky-other", "fog"],
    "cabinet-merged": ["cupboard", "cabinet"],
    "table-merged": ["desk-stuff", "table"],
    "floor-other-merged": ["floor-marble", "floor-other", "floor-tile"],
    "pavement-merged": ["floor-stone", "pavement"],
    "mountain-merged": ["hill", "mountain"],
    "grass-merged": ["moss", "grass", "straw"],
    "dirt-merged": ["mud", "dirt"],
    "paper-merged": ["napkin", "paper"],
    "food-other-merged": ["salad", "vegetable", "food-other"],
    "building-other-merged": ["skyscraper", "building-other"],
    "rock-merged": ["stone", "rock"],
    "wall-other-merged": ["wall-other", "wall-concrete", "wall-panel"],
    "rug-merged": ["mat", "rug", "carpet"],
}
#: removed by COCO panoptic (their pixels are VOID): in no class
COCO_REMOVED = {"furniture-other", "metal", "plastic", "solid-other", "structural-other",
                "waterdrops", "textile-other", "cloth", "clothes", "plant-other", "wood",
                "ground-other"}


def cocostuff_png_labels() -> dict[str, int]:
    """COCO-Stuff class name -> 0-based PNG label (= row of the shipped csv)."""
    out = {}
    for line in split_file("cocostuff_labels.txt").read_text().splitlines():
        label, name = line.split("\t")
        if int(label) > 0:
            out[name] = int(label) - 1
    return out


def test_every_registry_split_has_a_working_default():
    names = []
    for split in list_splits():
        config = default_embedding_config(split)
        check_embeddings(split)  # the default, validated
        check_embeddings(split, config)
        check_embeddings(split, {"provider": "default"})
        if any(not c.unseen for c in split.classes if c.val_unseen):
            check_embeddings(split.validation_view())  # NAME:val has its split's default
        matrix = get_class_embeddings(split, config)
        assert matrix.shape[0] == split.num_classes and np.isfinite(matrix).all()
        names.append((split.name, config.get("name", config["provider"])))
    defaults = dict(names)
    # the authors' vectors where they exist
    assert defaults["coco2014/zsi-48-17"] == "coco2014_w2v_withbg_48_17"
    assert defaults["coco2014/zsi-65-15"] == "coco2014_w2v_withbg_65_15"
    assert defaults["coco-stuff/spnet-156-15"] == "cocostuff_word2vec"
    assert defaults["voc12/zs3-4"] == "voc12_zs3_w2c"
    assert defaults["pascal-context/zs3-10"] == "pascal_context_zs3_w2c"
    assert defaults["voc12/spnet-15-5"] == "voc12_word2vec"
    assert defaults[ZSP] == "coco_panoptic_word2vec"
    assert defaults["synthetic/default"] == "attributes"


def test_merge_table_is_cocos_panoptic_merge_list():
    cats = json.loads(split_file("panoptic_coco_categories.json").read_text())
    labels = cocostuff_png_labels()
    with MERGE_TABLE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["panoptic_id"]), r["panoptic_name"]) for r in rows] == \
        [(c["id"], c["name"]) for c in cats]
    split = get_split(ZSP)
    used: list[int] = []
    for row, cat in zip(rows, cats, strict=True):
        members = [int(v) for v in row["cocostuff_png_labels_0based"].split()]
        names = row["cocostuff_names"].split("|")
        assert [labels[n] for n in names] == members, cat["name"]
        assert [int(v) - 1 for v in row["cocostuff_ids_1based"].split()] == members
        if cat["name"] in COCO_MERGES:
            assert names == COCO_MERGES[cat["name"]]
        else:  # things and unmerged stuff keep their COCO-Stuff id and name
            assert members == [cat["id"] - 1] and names == [cat["name"]], cat["name"]
        assert (row["zsp_split"] == "unseen") == split.by_id(cat["id"]).unseen
        used += members
    assert len(used) == len(set(used)) == 80 + 36 + 43
    assert not COCO_REMOVED & {n for r in rows for n in r["cocostuff_names"].split("|")}


def test_zsp_vectors_are_the_normalised_mean_of_the_merged_cocostuff_rows():
    split = get_split(ZSP)
    matrix = get_class_embeddings(split, default_embedding_config(split))
    raw = np.loadtxt(COCOSTUFF_CSV, delimiter=",")
    labels = cocostuff_png_labels()

    def expected(members: list[str]) -> np.ndarray:
        rows = raw[[labels[m] for m in members]]
        mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
        return mean / np.linalg.norm(mean)

    for name, members in COCO_MERGES.items():
        np.testing.assert_allclose(matrix[split.by_name(name).index], expected(members),
                                   rtol=1e-5, atol=1e-6)
    for name in ("person", "cow", "playingfield", "river", "banner", "window-other"):
        np.testing.assert_allclose(matrix[split.by_name(name).index], expected([name]),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    # a merged class is none of its members, but close to each
    tree = matrix[split.by_name("tree-merged").index]
    for member in COCO_MERGES["tree-merged"]:
        assert 0.3 < float(tree @ expected([member])) < 0.999
    fasttext = get_class_embeddings(split, {"provider": "file", "name": "coco_panoptic_fasttext"})
    assert fasttext.shape == (133, 300) and not np.allclose(fasttext, matrix)


def test_derived_vectors_are_cached_and_rebuilt_when_an_input_changes(tmp_path):
    split = get_split(ZSP)
    config = {"provider": "file", "name": "coco_panoptic_word2vec"}
    check_embeddings(split, config, cache_dir=tmp_path)
    again = compute_class_embeddings(split, config, tmp_path)
    assert again.cache_status == "hit"
    assert "cocostuff_word2vec.csv merged by" in again.source
    roles = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert "merge_table" in json.dumps(roles) and "vectors" in json.dumps(roles)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_file_provider_that_misses_a_class_names_the_file_and_the_class():
    split = get_split(ZSP)
    # the COCO-Stuff vectors as they are: rows by PNG label, which panoptic classes lack
    with pytest.raises(EmbeddingError) as exc:
        check_embeddings(split, {"provider": "file", "name": "cocostuff_word2vec"})
    text = one_line(exc)
    assert "provider file" in text and "cocostuff_word2vec.csv" in text
    assert "does not cover class 'person' of split coco-panoptic/zsp-119-14" in text
    assert "name=coco_panoptic_word2vec" in text
    assert "layout rows_by_png_label" in text
    # the same through a user path (what a user would try first)
    with pytest.raises(EmbeddingError, match=r"cocostuff_word2vec.csv: does not cover class "
                                             r"'person'"):
        get_class_embeddings(split, {"provider": "file", "path": str(COCOSTUFF_CSV),
                                     "layout": "rows_by_png_label"})


def test_user_files_missing_classes_name_the_first_one(tmp_path: Path):
    split = get_split(ZSP)
    full = get_class_embeddings(split, default_embedding_config(split))
    short = tmp_path / "short.csv"
    short.write_text("\n".join(",".join(map(repr, row.tolist())) for row in full[:130]) + "\n")
    with pytest.raises(EmbeddingError) as exc:
        check_embeddings(split, {"provider": "file", "path": str(short),
                                 "layout": "rows_in_split_order"})
    text = one_line(exc)
    assert str(short) in text and "130 class rows" in text
    assert f"the first class without one is {split.classes[130].name!r}" in text
    assert "the default of split coco-panoptic/zsp-119-14 is provider file with " \
           "name=coco_panoptic_word2vec" in text
    # by ids: the first class whose id the file does not list
    ids = [c.id for c in split.classes]
    with pytest.raises(EmbeddingError) as exc:
        check_embeddings(split, {"provider": "file", "path": str(short),
                                 "layout": "rows_in_split_order", "ids": ids[:130]})
    assert f"(first: {split.classes[130].name!r}, id {ids[130]})" in one_line(exc)


def test_other_providers_fail_up_front_with_the_default_named(tmp_path: Path):
    split = get_split("coco2014/zsi-48-17")
    with pytest.raises(EmbeddingError) as exc:  # the pipeline's default provider, on COCO
        check_embeddings(split, {"provider": "attributes"})
    text = one_line(exc)
    assert "class 'person' of split coco2014/zsi-48-17 has no attributes" in text
    assert text.endswith("the default of split coco2014/zsi-48-17 is provider file with "
                         "name=coco2014_w2v_withbg_48_17")
    with pytest.raises(EmbeddingError) as exc:
        check_embeddings(split, {"provider": "clip", "checkpoint": str(tmp_path / "b16.pt")})
    assert "provider clip" in one_line(exc) and "b16.pt does not exist" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown provider 'glove'"):
        check_embeddings(split, {"provider": "glove"})
    with pytest.raises(ConfigError, match="embeddings.file.name: unknown shipped file"):
        check_embeddings(split, {"provider": "file", "name": "coco_panoptic_glove"})
    with pytest.raises(ConfigError, match="embeddings.default: takes no options"):
        check_embeddings(split, {"provider": "default", "dim": 3})
    # a column file is read by category id: 65/15's vectors cover 48/17's validation view
    check_embeddings(split.validation_view(),
                     {"provider": "file", "name": "coco2014_w2v_withbg_65_15"})
    # a split without a default: one line saying what to give
    from zeroseg.platform.data.classes import ClassInfo, Split
    mine = Split(name="mine/x", dataset="mine", tasks=("semantic",), protocol="ignore-pixels",
                 classes=(ClassInfo(index=0, id=1, name="a", isthing=True, unseen=False),
                          ClassInfo(index=1, id=2, name="b", isthing=True, unseen=True)))
    with pytest.raises(ZerosegError) as exc:
        check_embeddings(mine)
    assert isinstance(exc.value, ConfigError)
    assert "split mine/x has no default class vectors" in one_line(exc)


def test_cli_embed_uses_the_default_and_refuses_a_file_that_misses_a_class(tmp_path, capsys):
    out = tmp_path / "zsp.npy"
    assert main(["embed", "--benchmark", ZSP, "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "provider   file (the default of split coco-panoptic/zsp-119-14) " \
           "name=coco_panoptic_word2vec" in captured.err
    assert "merged by" in captured.out and np.load(out).shape == (133, 300)
    code = main(["embed", "--provider", "file", "--benchmark", ZSP, "--set",
                 "name=cocostuff_word2vec", "--cache-dir", str(tmp_path / "c")])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cocostuff_word2vec.csv: does not cover class 'person'" in err[0]
    assert main(["embed", "--benchmark", ZSP, "--set", "dim=3"]) == EXIT_USER_ERROR
    assert "--set: provider options need --provider" in capsys.readouterr().err


def test_shipped_default_entries_are_consistent():
    files = shipped_files()
    seen: dict[str, str] = {}
    for name, shipped in files.items():
        for split_name in shipped.default_for:
            assert split_name in shipped.splits, (name, split_name)
            assert split_name not in seen, (split_name, seen.get(split_name), name)
            seen[split_name] = name
        if shipped.derived_from is not None:
            assert shipped.derived_from in files and shipped.path == MERGE_TABLE
            assert len(shipped.names) == len(shipped.ids or ()) == shipped.vectors
