"""Seen / unseen / HM aggregation, GZSL vs ZSL, and the result object's JSON and table."""

from __future__ import annotations

import json

import pytest

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.evaluation.summary import (
    PANOPTIC_METRICS,
    check_setting,
    class_mean,
    harmonic_mean,
    summarize,
)


def tiny_split() -> Split:
    # index: name (role)  -> 0 cat (seen), 1 dog (unseen), 2 sky (seen), 3 sea (unseen)
    spec = [("cat", True, False), ("dog", True, True), ("sky", False, False),
            ("sea", False, True)]
    classes = tuple(
        ClassInfo(index=i, id=i + 1, name=n, isthing=t, unseen=u, png_label=i)
        for i, (n, t, u) in enumerate(spec)
    )
    return Split(name="test/tiny", dataset="synthetic", tasks=("semantic", "panoptic", "instance"),
                 protocol=PROTOCOL_DROP_IMAGES, classes=classes)


def test_harmonic_mean_by_hand():
    # 2 * 0.6 * 0.2 / (0.6 + 0.2) = 0.24 / 0.8 = 0.3
    assert harmonic_mean(0.6, 0.2) == pytest.approx(0.3, abs=1e-15)
    # one side zero -> 0; both zero -> 0 (not a division by zero)
    assert harmonic_mean(0.5, 0.0) == 0.0
    assert harmonic_mean(0.0, 0.0) == 0.0
    # equal sides -> that value
    assert harmonic_mean(0.4, 0.4) == pytest.approx(0.4, abs=1e-15)
    # undefined side -> undefined
    assert harmonic_mean(None, 0.3) is None
    assert harmonic_mean(0.3, None) is None


def test_class_mean_skips_undefined():
    assert class_mean([0.2, None, 0.4]) == pytest.approx(0.3, abs=1e-15)
    assert class_mean([None, None]) is None
    assert class_mean([]) is None


def test_gzsl_aggregation_by_hand():
    split = tiny_split()
    per_class = {
        0: {"pq": 0.5, "sq": 0.8, "rq": 0.625},
        1: {"pq": 0.1, "sq": 0.5, "rq": 0.2},
        2: {"pq": 0.3, "sq": None, "rq": 0.0},  # an undefined value is left out of its mean
        3: {"pq": 0.0, "sq": 0.0, "rq": 0.0},
    }
    r = summarize("panoptic", split, "GZSL", PANOPTIC_METRICS, per_class, num_images=3)
    assert r.setting == "gzsl"
    # seen = {cat, sky}: pq (0.5 + 0.3) / 2 = 0.4; sq only cat -> 0.8; rq (0.625 + 0) / 2
    assert r.seen["pq"] == pytest.approx(0.4, abs=1e-15)
    assert r.seen["sq"] == pytest.approx(0.8, abs=1e-15)
    assert r.seen["rq"] == pytest.approx(0.3125, abs=1e-15)
    # unseen = {dog, sea}: pq (0.1 + 0) / 2 = 0.05
    assert r.unseen["pq"] == pytest.approx(0.05, abs=1e-15)
    # HM pq = 2 * 0.4 * 0.05 / 0.45 = 0.04 / 0.45
    assert r.hm["pq"] == pytest.approx(0.04 / 0.45, abs=1e-15)
    assert list(r.per_class) == ["cat", "dog", "sky", "sea"]
    assert r.unseen_classes == frozenset({"dog", "sea"})
    assert r.counts["seen_classes_in_mean"] == 2 and r.counts["unseen_classes_in_mean"] == 2


def test_zsl_reports_unseen_only_and_no_seen_or_hm():
    split = tiny_split()
    per_class = {0: {"pq": 0.9, "sq": 0.9, "rq": 0.9}, 1: {"pq": 0.2, "sq": 0.4, "rq": 0.5},
                 3: {"pq": 0.4, "sq": 0.6, "rq": 0.7}}
    gz = summarize("panoptic", split, "gzsl", PANOPTIC_METRICS, per_class)
    z = summarize("panoptic", split, "zsl", PANOPTIC_METRICS, per_class)
    assert list(z.per_class) == ["dog", "sea"]
    assert z.unseen["pq"] == pytest.approx(0.3, abs=1e-15)  # (0.2 + 0.4) / 2
    assert z.seen == {"pq": None, "sq": None, "rq": None}
    assert z.hm == {"pq": None, "sq": None, "rq": None}
    # in GZSL the seen side exists (sky missing from per_class = undefined, so seen = cat only)
    assert gz.seen["pq"] == pytest.approx(0.9, abs=1e-15)
    assert gz.hm["pq"] == pytest.approx(2 * 0.9 * 0.3 / 1.2, abs=1e-15)


def test_nan_is_undefined_and_json_is_strict():
    split = tiny_split()
    per_class = {0: {"iou": float("nan")}, 1: {"iou": 0.25}, 2: {"iou": 0.75}, 3: {"iou": None}}
    r = summarize("semantic", split, "gzsl", ("iou",), per_class, num_images=2,
                  details={0: {"tp": 0}})
    assert r.per_class["cat"]["iou"] is None
    assert r.seen["iou"] == 0.75 and r.unseen["iou"] == 0.25
    doc = r.to_json()
    assert set(doc) >= {"per_class", "seen", "unseen", "hm"}
    assert doc["per_class"]["sea"] == {"iou": None}
    assert doc["setting"] == "gzsl" and doc["split"] == "test/tiny" and doc["num_images"] == 2
    text = json.dumps(doc, allow_nan=False)  # raises if a NaN slipped through
    assert json.loads(text)["hm"]["iou"] == pytest.approx(2 * 0.75 * 0.25 / 1.0, abs=1e-15)


def test_format_table_marks_roles_and_summary_rows():
    split = tiny_split()
    per_class = {i: {"pq": 0.1 * (i + 1), "sq": 0.5, "rq": 0.2} for i in range(4)}
    table = summarize("panoptic", split, "gzsl", PANOPTIC_METRICS, per_class).format_table()
    lines = table.splitlines()
    dog = next(line for line in lines if line.startswith("dog"))
    cat = next(line for line in lines if line.startswith("cat"))
    assert "unseen" in dog and "unseen" not in cat and "seen" in cat
    assert " 20.0" in dog  # pq of dog in percent
    assert any(line.startswith("HM") for line in lines)
    assert "PQ" in lines[1] and "SQ" in lines[1]


def test_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="setting"):
        check_setting("transductive")
    assert check_setting(" ZSL ") == "zsl"
