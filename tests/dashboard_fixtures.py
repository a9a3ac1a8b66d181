"""A results store shaped like the pipeline's runs on the tiny synthetic benchmark.

:func:`fill_store` is the one place the dashboard tests get their data from, so it can later be
swapped for real pipeline runs (``zeroseg run`` / ``sweep`` / ``reproduce`` on the tiny
benchmark) without touching the tests. It writes through the real
:meth:`Store.record_run(RunRecord(...)) <zeroseg.platform.store.Store.record_run>` API and
follows the pipeline's conventions (run kinds, statuses, metric keys, curve names,
``config["params"]``, ``leakage_audit`` and ``artifacts`` keys), and writes the small files the
artifacts point at: a COCO-layout dataset folder (classes.json, images, semantic ground truth),
semantic prediction PNGs and the generator's synthetic unseen features (``.npz``). The feature
cache of real seen features is deliberately *missing* (``artifacts.features.train`` points at a
folder that does not exist): the dashboard must say so instead of failing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.synthetic.classes_file import classes_document
from zeroseg.platform.data.synthetic.vocabulary import synthetic_split
from zeroseg.platform.io import atomic_write_json
from zeroseg.platform.store import CurveRecord, RunRecord, Store, trial_uid

SPLIT = "synthetic/default"
METHODS = ("supervised", "projection", "gmmn", "pading")
SEEDS = (0, 1, 2)
SWEEP = "pading-tiny"
OBJECTIVE = "val/semantic/gzsl/hm/iou"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
# Unseen-class quality of each method (fraction): supervised knows no unseen class.
#: A run's generator fidelity diagnostics as methods/fidelity.py stores them.
FIDELITY = {
    "protocol": "validation", "mmd": 0.412, "ncm_accuracy": 0.8, "chance": 0.5,
    "variance_ratio": 0.31, "real_variance_ratio": 0.9, "classes": 2, "real_rows": 30,
    "fakes_per_class": 64,
    "per_class": [{"class": 3, "name": "purple star", "real": 14, "mmd": 0.401,
                   "ncm_accuracy": 0.71},
                  {"class": 9, "name": "smooth grass", "real": 16, "mmd": 0.423,
                   "ncm_accuracy": 0.88}],
}
UNSEEN_LEVEL = {"supervised": 0.0, "projection": 0.05, "gmmn": 0.18, "pading": 0.27}
TASK_METRICS = {"semantic": ("iou",), "panoptic": ("pq", "sq", "rq"),
                "instance": ("ap50", "recall50")}


def _hm(seen: float, unseen: float) -> float:
    return 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)


def _evaluation(task: str, setting: str, seen: float, unseen: float, rng: np.random.Generator,
                classes: list[tuple[str, bool]]) -> dict[str, Any]:
    """An ``EvalResult.to_json()``-shaped dict: per-class values around the class means."""
    metrics = TASK_METRICS[task]
    per_class: dict[str, dict[str, float]] = {}
    if task == "semantic":
        for name, unseen_class in classes:
            if setting == "zsl" and not unseen_class:
                continue
            base = unseen if unseen_class else seen
            per_class[name] = {"iou": float(np.clip(base + rng.normal(0, 0.04), 0, 1))}
    scale = {m: 1.0 + 0.1 * i for i, m in enumerate(metrics)}
    s = {m: min(1.0, seen * scale[m]) for m in metrics}
    u = {m: min(1.0, unseen * scale[m]) for m in metrics}
    if setting == "zsl":
        u = {m: min(1.0, v + 0.2) for m, v in u.items()}  # no seen classes to confuse with
        return {"task": task, "setting": setting, "seen": {}, "unseen": u, "hm": {},
                "per_class": per_class, "split": SPLIT, "num_images": 8}
    return {"task": task, "setting": setting, "seen": s, "unseen": u,
            "hm": {m: _hm(s[m], u[m]) for m in metrics}, "per_class": per_class,
            "split": SPLIT, "num_images": 8}


def _add_evaluations(rec: RunRecord, rng: np.random.Generator, seen: float, unseen: float,
                     classes: list[tuple[str, bool]], eval_splits: tuple[str, ...] = (
                         "test", "val")) -> None:
    for eval_split in eval_splits:
        shift = 0.03 if eval_split == "val" else 0.0
        for task in TASK_METRICS:
            for setting in ("gzsl", "zsl"):
                rec.add_evaluation(_evaluation(task, setting, seen, unseen + shift, rng,
                                               classes), eval_split)


def _audit(embedding: str = "attributes") -> dict[str, Any]:
    return {"protocol": "drop-images", "images_total": 24, "images_kept": 17,
            "images_dropped": 7, "unseen_instances_in_training": 0,
            "unseen_pixels_in_training": 0, "text_encoder": embedding,
            "text_encoder_pretraining": "none (attribute vectors)",
            "backbone_init": "random", "hyperparameters_chosen_on": "val", "passed": True}


def _write_dataset(root: Path) -> dict[str, Any]:
    """A few COCO-layout files: classes.json, 4 validation images with semantic ground truth
    (two of them containing unseen classes), and a semantic prediction of each."""
    from PIL import Image

    split = synthetic_split()
    data = root / "tiny"
    atomic_write_json(data / "annotations" / "classes.json",
               classes_document(split, size="tiny", seed=0, image_size=32))
    (data / "val").mkdir(parents=True)
    (data / "stuff_val").mkdir()
    pred = root / "predictions" / "test" / "semantic"
    pred.mkdir(parents=True)
    seen = [c for c in split.classes if not c.unseen]
    unseen = [c for c in split.classes if c.unseen]
    stems = []
    for i in range(4):
        stem = f"{i + 1:012d}"
        gt = np.full((32, 32), seen[i].png_label, np.uint8)
        gt[:4] = 255
        if i % 2 == 0:  # images 0 and 2 contain an unseen thing
            gt[10:22, 10:22] = unseen[i // 2].png_label
        guess = gt.copy()
        guess[10:16, 10:22] = seen[-1].png_label  # half of the unseen object predicted wrong
        colours = np.array([c.extra["color"] for c in split.classes] + [[0, 0, 0]] * 300,
                           np.uint8)
        image = colours[np.where(gt == 255, len(split.classes), gt)]
        Image.fromarray(image).save(data / "val" / f"{stem}.jpg")
        Image.fromarray(gt).save(data / "stuff_val" / f"{stem}.png")
        Image.fromarray(guess).save(pred / f"{stem}.png")
        stems.append(stem)
    rng = np.random.default_rng(0)
    unseen_index = np.array([c.index for c in unseen for _ in range(20)], np.int64)
    centres = rng.normal(size=(len(split.classes), 16)).astype(np.float32)
    synth = root / "synthetic_unseen.npz"
    np.savez(synth, embeddings=(centres[unseen_index] + 0.1 * rng.normal(
        size=(len(unseen_index), 16))).astype(np.float32), class_index=unseen_index)
    return {"dataset_root": str(data), "eval_data_split": "val",
            "predictions": {"test": str(root / "predictions" / "test")},
            "features": {"train": str(root / "features" / "missing-entry")},
            "synthetic_unseen": str(synth),
            "class_names": [c.name for c in split.classes],
            "unseen_classes": [c.name for c in unseen], "_stems": stems,
            "_unseen_in_gt": [unseen[0].name, unseen[1].name]}


def fill_store(store: Store, root: Path) -> dict[str, Any]:
    """Fill ``store`` with runs shaped like the pipeline's; write their files under ``root``.

    Returns what the tests check against: run ids by role, the sweep's name, its trial ids by
    status, and the artifacts of the richest run.
    """
    root = Path(root)
    split = synthetic_split()
    classes = [(c.name, c.unseen) for c in split.classes]
    arts = _write_dataset(root)
    artifacts = {k: v for k, v in arts.items() if not k.startswith("_")}
    artifacts["fidelity"] = {"val": FIDELITY}
    rng = np.random.default_rng(42)
    common = {"dataset": "synthetic", "split": SPLIT, "backbone": "tiny",
              "code_version": "v0.1.0-3-gabcdef012345", "code_dirty": False,
              "dataset_fingerprint": "sha256:0123456789abcdef", "host": "test-host"}
    out: dict[str, Any] = {"train": {}, "sweep": SWEEP, "trials": {}, "reproductions": [],
                           "artifacts": arts}
    step = 0

    def when() -> datetime:
        nonlocal step
        step += 1
        return T0 + timedelta(minutes=step)

    for method in METHODS:
        for seed in SEEDS:
            rec = RunRecord(kind="train", status="finished", method=method,
                            embedding="attributes", seed=seed,
                            config={"method": {"name": method}, "seed": seed},
                            leakage_audit=_audit(), created_at=when(), duration_s=12.0,
                            artifacts=artifacts if method == "pading" else {}, **common)
            _add_evaluations(rec, rng, 0.6 + rng.normal(0, 0.02),
                             max(0.0, UNSEEN_LEVEL[method] + rng.normal(0, 0.02)), classes)
            if method == "pading":
                for e in range(5):
                    rec.curves += [CurveRecord("generator/loss", e, 1.0 / (e + 1)),
                                   CurveRecord("classifier/loss", e, 0.8 / (e + 1)),
                                   CurveRecord("train/loss", e, 2.0 - 0.3 * e)]
            out["train"].setdefault(method, []).append(store.record_run(rec))
    # A PADing run with CLIP embeddings (one seed): a filter on embedding tells them apart.
    rec = RunRecord(kind="train", status="finished", method="pading", embedding="clip", seed=0,
                    config={"method": {"name": "pading"}}, leakage_audit=_audit("clip"),
                    created_at=when(), **common)
    _add_evaluations(rec, rng, 0.62, 0.33, classes)
    out["clip"] = store.record_run(rec)
    # A failed and a running run: not on the leaderboard by default.
    out["failed"] = store.record_run(RunRecord(
        kind="train", status="failed", method="gmmn", embedding="attributes", seed=7,
        error="RuntimeError: CUDA out of memory\n(traceback)", created_at=when(),
        leakage_audit=_audit(), **common))
    out["running"] = store.record_run(RunRecord(
        kind="train", status="running", method="pading", embedding="attributes", seed=8,
        created_at=when(), leakage_audit=_audit(), **common))

    # The sweep: trials over PADing's knobs, some stopped early by ASHA, one still running.
    store.upsert_sweep(SWEEP, method="pading", objective=OBJECTIVE, mode="max",
                       space={"num_primitives": {"choice": [100, 200, 300, 400, 500, 600, 700]},
                              "structure_weight": {"loguniform": [0.01, 10]},
                              "sigmas": {"choice": ["paper", "code", [1, 2, 4]]}},
                       settings={"searcher": "optuna", "scheduler": "asha", "trials": 12,
                                 "concurrency": 2})
    primitives = (100, 200, 300, 400, 500, 600, 700, 400, 300, 500)
    sigmas = ("paper", "code", [1.0, 2.0, 4.0], "paper", "code", "paper", "code", "paper",
              [1.0, 2.0, 4.0], "paper")
    for i, (n, sigma) in enumerate(zip(primitives, sigmas, strict=True)):
        trial_id = f"t{i:03d}"
        status = "stopped" if i in (1, 5) else "running" if i == 9 else "finished"
        quality = 0.12 + 0.1 * (1 - abs(n - 400) / 400) + (0.02 if sigma == "paper" else 0)
        params = {"num_primitives": n, "structure_weight": float(10 ** (i / 3 - 2)),
                  "sigmas": sigma, "lr": 2e-4, "layers": 2}
        rec = RunRecord(kind="trial", status=status, method="pading", embedding="attributes",
                        seed=0, sweep=SWEEP, trial_id=trial_id, uid=trial_uid(SWEEP, trial_id),
                        config={"method": {"name": "pading"}, "params": params},
                        leakage_audit=_audit(), created_at=when(), **common)
        epochs = 2 if status == "stopped" else 3 if status == "running" else 6
        for e in range(epochs):
            rec.curves.append(CurveRecord("val/hm", e, quality * (e + 1) / 6))
        if status != "running":
            rec.finished_at = T0 + timedelta(hours=1, minutes=5 * i)
            _add_evaluations(rec, rng, 0.6, quality * epochs / 6, classes,
                             eval_splits=("val", "test"))
        run_id = store.record_run(rec)
        out["trials"][trial_id] = {"run_id": run_id, "status": status, "num_primitives": n}
    # Reproductions of the two best finished trials, three seeds each.
    finished = [t for t, v in out["trials"].items() if v["status"] == "finished"]
    ranked = sorted(finished, key=lambda t: abs(out["trials"][t]["num_primitives"] - 400))
    out["reproduced_trials"] = ranked[:2]
    for trial in ranked[:2]:
        source = out["trials"][trial]
        for seed in SEEDS:
            rec = RunRecord(kind="reproduction", status="finished", method="pading",
                            embedding="attributes", seed=seed,
                            source_run_id=source["run_id"], sweep=None,
                            config={"method": {"name": "pading"}, "seed": seed},
                            leakage_audit=_audit(), created_at=when(), **common)
            _add_evaluations(rec, rng, 0.6, 0.29 + rng.normal(0, 0.02), classes)
            out["reproductions"].append(store.record_run(rec))
    out["main_run"] = out["train"]["pading"][0]
    return out


def write_optuna_study(path: Path, study_name: str, trials: list[tuple[dict[str, Any], float]]
                       ) -> None:
    """An Optuna study in ``path`` (SQLite) with the given completed ``(params, value)`` trials,
    as the sweep driver leaves next to the results store."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{path}",
                                direction="maximize")
    for params, value in trials:
        dists = {k: FloatDistribution(1e-3, 1e4) if isinstance(v, int | float)
                 else CategoricalDistribution(["paper", "code", "1,2,4"])
                 for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=value))
