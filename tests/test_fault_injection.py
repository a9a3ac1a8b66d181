"""Fault injection (issue 15): malformed input to every command, and kill -9 of the driver.

Default suite (fast):

- the bad-input table: each command driven with each malformed input the issue lists (store
  URLs and files, unwritable outputs, an empty config, garbage RLE, negative workers, a useless
  ``--address``) must fail with one line on stderr and exit status 2, before any expensive work
  and without writing anything;
- ``kill -9`` of ``zeroseg data synth`` half-way: no temporary folder is left once it is run
  again, and the files are byte-identical to an uninterrupted generation.

Slow suite (``make test-slow``): chains of ``kill -9`` of the driver at random moments of
``zeroseg run`` and of ``zeroseg sweep`` (at least 20 kills in all), each followed by a re-run
(``--resume`` for a sweep), until one completes. The store must then hold exactly what an
uninterrupted run stores: the same runs (trials) with the same numbers, none twice, none
lost. Each test prints its figures (kills survived, inputs tried, rows lost).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from zeroseg.platform.cli import EXIT_USER_ERROR, main
from zeroseg.platform.store import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "zeroseg.platform.cli"]


def run_config(work: Path, **changes: Any) -> dict[str, Any]:
    """A small experiment: the tiny benchmark generated into the work dir, an 8-step segmenter
    (Ray Train's local mode, so a kill of the driver kills the training too), two methods with
    two seeds on both protocols."""
    doc: dict[str, Any] = {
        "name": "faults",
        "methods": ["seen-only", "projection"],
        "seeds": [0, 1],
        "data": {"root": str(work / "data"), "synthetic": {"size": "tiny", "seed": 0}},
        "embedding": {"provider": "attributes", "options": {"dim": 16}},
        "segmenter": {"model": {"size": "tiny", "train_num_points": 256},
                      "optim": {"lr": 0.001, "grad_clip": 1.0},
                      "train": {"steps": 8, "batch_size": 4, "checkpoint_every": 2,
                                "log_every": 2},
                      "distributed": {"workers": 0, "zero_stage": 0}},
        "features": {"batch_size": 16, "shard_size": 16},
        "evaluation": {"protocols": ["test", "validation"], "settings": ["gzsl"]},
        "params": {"projection": {"steps": 20, "batch_size": 128}},
        "work_dir": str(work),
    }
    doc.update(changes)
    return doc


def _one_line_error(code: int, err: str, needle: str) -> None:
    """Exit status 2 and the error as the last line of stderr, one line (a command may have
    printed its header line before it), no traceback."""
    assert code == EXIT_USER_ERROR, (code, err)
    lines = err.splitlines()
    assert lines and lines[-1].startswith("zeroseg: error: "), err
    assert sum("error" in line for line in lines) == 1 and len(lines) <= 2, err
    assert "Traceback" not in err and needle in lines[-1], (needle, err)


# -- the bad-input table ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs for the table: a tiny dataset, another application's SQLite file, a store of an
    older schema, a file where a folder is expected, predictions with garbage RLE, configs."""
    from zeroseg.platform.data.synthetic.generate import generate
    from zeroseg.platform.store import open_store

    base = tmp_path_factory.mktemp("bad_input")
    data = base / "tiny"
    generate("tiny", 0, data, workers=1)
    foreign = base / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    store = base / "results.db"
    open_store(store).close()
    old = base / "old.db"
    open_store(old).close()
    with sqlite3.connect(old) as db:
        db.execute("UPDATE schema_version SET version = 1")
    a_file = base / "a_file"
    a_file.write_text("not a folder\n")
    instances = json.loads((data / "annotations" / "instances_val.json").read_text())
    image = instances["images"][0]
    garbage_rle = base / "garbage_rle.json"
    garbage_rle.write_text(json.dumps([{
        "image_id": image["id"], "category_id": instances["categories"][0]["id"],
        "score": 0.9, "segmentation": {"size": [image["height"], image["width"]],
                                       "counts": "garbage!!"}}]))
    empty = base / "empty.yaml"
    empty.write_text("")
    config = base / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(base / "work")))
    train = base / "train.yaml"
    train.write_text(yaml.safe_dump({"data": {"root": str(data)}, "model": {"size": "tiny"},
                                     "train": {"steps": 2, "eval": True},
                                     "distributed": {"workers": 0},
                                     "output": {"run_dir": str(base / "train_run")}}))
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "projection", "config": str(config),
        "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
        "knobs": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    read_only = base / "read_only"
    read_only.mkdir()
    return {"base": base, "data": data, "store": store, "foreign": foreign, "old": old,
            "file": a_file,
            "garbage_rle": garbage_rle, "empty": empty, "config": config, "train": train,
            "space": space, "read_only": read_only}


GARBAGE_URL = "mysql+foo://::garbage"
OLDER_SCHEMA = f"schema version 1, this zeroseg reads {SCHEMA_VERSION}"
#: id -> (argv built from the workspace, what the one line must say, paths that must not exist)
BAD_INPUTS: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str,
                            Callable[[dict[str, Path]], list[Path]]]] = {
    "data-synth-out-under-a-file": (
        lambda w: ["data", "synth", "--size", "tiny", "--out", str(w["file"] / "tiny")],
        "is a file, not a folder", lambda w: []),
    "embed-out-under-a-file": (
        lambda w: ["embed", "--provider", "attributes", "--gt", str(w["data"]), "--out",
                   str(w["file"] / "e.npy"), "--cache-dir", str(w["base"] / "ec1")],
        "is a file, not a folder", lambda w: [w["base"] / "ec1"]),
    "embed-out-is-a-folder": (
        lambda w: ["embed", "--provider", "attributes", "--gt", str(w["data"]), "--out",
                   str(w["base"]), "--cache-dir", str(w["base"] / "ec2")],
        "is a folder", lambda w: [w["base"] / "ec2"]),
    "embed-cache-dir-under-a-file": (
        lambda w: ["embed", "--provider", "attributes", "--gt", str(w["data"]), "--cache-dir",
                   str(w["file"] / "cache")], "is a file, not a folder", lambda w: []),
    "results-garbage-url": (lambda w: ["results", "list", "--store", GARBAGE_URL],
                            "not a database URL", lambda w: []),
    "dashboard-garbage-url": (lambda w: ["dashboard", "--store", GARBAGE_URL],
                              "not a database URL", lambda w: []),
    "results-missing-store": (
        lambda w: ["results", "table", "--store", str(w["base"] / "nowhere" / "r.db")],
        "not found", lambda w: [w["base"] / "nowhere"]),
    "dashboard-missing-store": (
        lambda w: ["dashboard", "--store", str(w["base"] / "nowhere" / "r.db")],
        "not found", lambda w: [w["base"] / "nowhere"]),
    "results-foreign-sqlite": (lambda w: ["results", "list", "--store", str(w["foreign"])],
                               "not a zeroseg results store", lambda w: []),
    "dashboard-foreign-sqlite": (lambda w: ["dashboard", "--store", str(w["foreign"])],
                                 "not a zeroseg results store", lambda w: []),
    "results-older-schema": (lambda w: ["results", "list", "--store", str(w["old"])],
                             OLDER_SCHEMA, lambda w: []),
    "dashboard-older-schema": (lambda w: ["dashboard", "--store", str(w["old"])],
                               OLDER_SCHEMA, lambda w: []),
    "results-export-csv-under-a-file": (
        lambda w: ["results", "export", "--store", str(w["store"]), "--csv",
                   str(w["file"] / "x.csv")], "is a file, not a folder", lambda w: []),
    "run-garbage-store-url": (
        lambda w: ["run", str(w["config"]), "--store", GARBAGE_URL], "not a database URL",
        lambda w: [w["base"] / "work"]),
    "run-foreign-store": (
        lambda w: ["run", str(w["config"]), "--store", str(w["foreign"])],
        "not a zeroseg results store", lambda w: [w["base"] / "work"]),
    "run-older-store": (
        lambda w: ["run", str(w["config"]), "--store", str(w["old"])],
        OLDER_SCHEMA, lambda w: [w["base"] / "work"]),
    "run-store-under-a-file": (
        lambda w: ["run", str(w["config"]), "--store", str(w["file"] / "r.db")],
        "is a file, not a folder", lambda w: [w["base"] / "work"]),
    "run-work-dir-under-a-file": (
        lambda w: ["run", str(w["config"]), "--set", f"work_dir={w['file'] / 'work'}"],
        "is a file, not a folder", lambda w: [w["base"] / "work"]),
    "run-empty-config": (lambda w: ["run", str(w["empty"])], "the file is empty",
                         lambda w: [w["base"] / ".zeroseg"]),
    "run-address-with-workers-0": (
        lambda w: ["run", str(w["config"]), "--address", "ray://127.0.0.1:10001"],
        "segmenter.distributed.workers is 0", lambda w: [w["base"] / "work"]),
    "eval-instance-garbage-rle": (
        lambda w: ["eval", "instance", "--gt", str(w["data"]), "--split", "val", "--pred",
                   str(w["garbage_rle"])], "invalid segmentation", lambda w: []),
    "eval-negative-workers": (
        lambda w: ["eval", "semantic", "--gt", str(w["data"]), "--split", "val", "--pred",
                   str(w["data"] / "stuff_val"), "--workers", "-3"], "--workers",
        lambda w: []),
    "sweep-garbage-store-url": (
        lambda w: ["sweep", str(w["space"]), "--name", "s", "--store", GARBAGE_URL],
        "not a database URL", lambda w: [w["base"] / "work"]),
    "sweep-foreign-store": (
        lambda w: ["sweep", str(w["space"]), "--name", "s", "--store", str(w["foreign"])],
        "not a zeroseg results store", lambda w: [w["base"] / "work"]),
    "sweep-resume-missing-store": (
        lambda w: ["sweep", "--resume", "s", "--store", str(w["base"] / "nowhere" / "r.db")],
        "not found", lambda w: [w["base"] / "nowhere"]),
    "reproduce-missing-store": (
        lambda w: ["reproduce", "s", "--store", str(w["base"] / "nowhere" / "r.db")],
        "not found", lambda w: [w["base"] / "nowhere"]),
    "train-segmenter-garbage-store-url": (
        lambda w: ["train", "segmenter", str(w["train"]), "--store", GARBAGE_URL],
        "not a database URL", lambda w: [w["base"] / "train_run"]),
    "train-segmenter-address-with-workers-0": (
        lambda w: ["train", "segmenter", str(w["train"]), "--address", "ray://127.0.0.1:1"],
        "distributed.workers is 0", lambda w: [w["base"] / "train_run"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, capsys, case):
    argv, needle, untouched = BAD_INPUTS[case]
    cwd = os.getcwd()
    os.chdir(workspace["base"])  # a default store (.zeroseg/...) would land here
    try:
        code = main(argv(workspace))
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    _one_line_error(code, err, needle)
    for path in untouched(workspace):
        assert not path.exists(), f"{case} wrote {path}"


READ_ONLY_INPUTS = {
    "data-synth-read-only-fs": (lambda w: ["data", "synth", "--size", "tiny", "--out",
                                           str(w["read_only"] / "tiny")],
                                "cannot write the synthetic benchmark"),
    "embed-out-read-only-fs": (lambda w: ["embed", "--provider", "attributes", "--gt",
                                          str(w["data"]), "--out", str(w["read_only"] / "e.npy"),
                                          "--cache-dir", str(w["base"] / "ec3")],
                               "cannot write the embedding matrix"),
    "embed-cache-dir-read-only-fs": (lambda w: ["embed", "--provider", "attributes", "--gt",
                                                str(w["data"]), "--cache-dir",
                                                str(w["read_only"] / "cache")],
                                     "cannot write the embedding cache"),
    "run-store-on-read-only-fs": (lambda w: ["run", str(w["config"]), "--store",
                                             str(w["read_only"] / "r.db")],
                                  "cannot open (unable to open the database file"),
}


@pytest.mark.parametrize("case", list(READ_ONLY_INPUTS))
def test_unwritable_outputs_on_a_read_only_file_system(workspace, case):
    from conftest import run_read_only

    argv, needle = READ_ONLY_INPUTS[case]
    result = run_read_only(workspace["read_only"], [*CLI, *argv(workspace)],
                           capture_output=True, text=True, timeout=300,
                           cwd=workspace["base"])
    _one_line_error(result.returncode, result.stderr, needle)
    assert list(workspace["read_only"].iterdir()) == []
    assert not (workspace["base"] / "work").exists()


def test_bad_input_figures(workspace, capsys):
    with capsys.disabled():
        print(f"\n[fault injection] bad inputs tried: {len(BAD_INPUTS) + len(READ_ONLY_INPUTS)} "
              f"({len(BAD_INPUTS)} in-process, {len(READ_ONLY_INPUTS)} on a read-only file "
              "system), each one line on stderr with exit status 2")


# -- kill -9 of data synth -------------------------------------------------------------------------
def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill_9_of_data_synth_leaves_nothing_behind_and_the_rerun_is_identical(tmp_path):
    out = tmp_path / "tiny"
    cmd = [*CLI, "data", "synth", "--size", "tiny", "--workers", "1", "--quiet", "--out",
           str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = list(tmp_path.glob(".tiny.*.tmp"))
        if temps and len(list(temps[0].rglob("*.png"))) >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "data synth ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert temps and temps[0].is_dir() and not out.exists()  # the kill left a half-built folder

    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # the leftover is gone
    reference = tmp_path.parent / f"{tmp_path.name}-reference"
    subprocess.run([*CLI, "data", "synth", "--size", "tiny", "--workers", "1", "--quiet",
                    "--out", str(reference / "tiny")], check=True, capture_output=True,
                   timeout=300)
    assert _tree_digest(out) == _tree_digest(reference / "tiny")
    shutil.rmtree(reference)


# -- kill -9 of the driver: zeroseg run and zeroseg sweep (slow) ----------------------------------
def _stored_runs(store: Path) -> list[dict[str, Any]]:
    """Every stored run (superseded copies included), with its metric rows."""
    from zeroseg.platform.store import open_store

    if not store.exists():
        return []
    with open_store(store, read_only=True) as opened:
        runs = opened.runs(superseded=True, newest_first=False, full=True)
        for run in runs:
            run["metric_rows"] = {(m["eval_split"], m["task"], m["setting"], m["subset"],
                                   m["class_name"], m["metric"]): m["value"]
                                  for m in opened.run(run["id"])["metrics"]}
    return runs


def _kill_chain(start: Callable[[int], list[str]], rng: random.Random, kills: int,
                duration: float, startup: float, env: dict[str, str], log: Path,
                after_kill: Callable[[], None] = lambda: None) -> list[tuple[str, float]]:
    """Start the command and kill -9 its process group after a random delay, then start it
    again (``start(attempt)``: that attempt's command line), up to ``kills`` times; then let it
    run to the end. A delay is drawn uniformly over a start (``startup``) plus the work left,
    estimated from an uninterrupted run's ``duration`` less half of what each killed attempt
    ran after its start (work a kill interrupts is partly redone). An attempt that ends before
    its kill ends the chain. Returns the attempts: ("killed", delay) or ("completed",
    seconds)."""
    attempts: list[tuple[str, float]] = []
    remaining = max(1.0, duration - startup)  # work, after the start
    while True:
        cmd = start(len(attempts))
        hit = sum(1 for how, _ in attempts if how == "killed")
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(cmd)}\n")
            out.flush()
            began = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            delay = rng.uniform(0.5, startup + remaining) if hit < kills else 1800.0
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                assert hit < kills, log.read_text()[-4000:]  # the last attempt timed out
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                out.write(f"[killed with SIGKILL after {delay:.1f} s]\n")
                attempts.append(("killed", round(delay, 1)))
                remaining = max(1.0, remaining - max(0.0, delay - startup) / 2)
                after_kill()
                continue
            assert code == 0, log.read_text()[-4000:]
            attempts.append(("completed", round(time.monotonic() - began, 1)))
            return attempts  # it finished (before its kill): the chain is complete


def _env(ray_tmp: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


@pytest.mark.slow
def test_kill_9_of_zeroseg_run_at_random_moments_loses_and_duplicates_nothing(tmp_path, capsys):
    rng = random.Random(15)
    reference_work = tmp_path / "reference"
    config = tmp_path / "reference.yaml"
    config.write_text(yaml.safe_dump(run_config(reference_work)))
    durations = []
    for _ in range(2):  # the second run reuses everything: what a start costs
        started = time.monotonic()
        subprocess.run([*CLI, "run", str(config)], env=_env(), check=True,
                       capture_output=True, timeout=1800)
        durations.append(time.monotonic() - started)
    duration, startup = durations
    reference = {(r["method"], r["seed"]): r for r in _stored_runs(reference_work
                                                                    / "results.db")}
    assert len(reference) == 4 and all(r["status"] == "finished" for r in reference.values())

    total, all_delays, lost, duplicated, chain = 0, [], 0, 0, 0
    chains: list[list[tuple[str, float]]] = []
    while total < 14 and chain < 8:  # chains of kills, each until a re-run completes
        work = tmp_path / f"chain{chain}"
        path = tmp_path / f"chain{chain}.yaml"
        path.write_text(yaml.safe_dump(run_config(work)))
        attempts = _kill_chain(lambda attempt, p=path: [*CLI, "run", str(p)], rng,
                               14 - total, duration, startup, _env(),
                               tmp_path / f"chain{chain}.log")
        chain += 1
        chains.append(attempts)
        delays = [d for how, d in attempts if how == "killed"]
        total += len(delays)
        all_delays += delays
        runs = _stored_runs(work / "results.db")
        keys = [(r["method"], r["seed"]) for r in runs]
        duplicated += len(keys) - len(set(keys))
        lost += len(set(reference) - set(keys))
        assert sorted(keys) == sorted(reference), keys  # each run once, none lost
        for run in runs:
            ref = reference[(run["method"], run["seed"])]
            assert run["status"] == "finished"
            assert run["metric_rows"] == ref["metric_rows"], run["method"]  # the same numbers
        # No temporary folder of a killed writer is left beside the dataset.
        assert not list(work.glob(".data.*.tmp"))
        # Once complete, running it again stores nothing new.
        before = sorted(r["uid"] for r in runs)
        again = subprocess.run([*CLI, "run", str(path)], env=_env(), capture_output=True,
                               text=True, timeout=1800)
        assert again.returncode == 0 and again.stderr.count("reused, not run again") == 4
        assert sorted(r["uid"] for r in _stored_runs(work / "results.db")) == before
    assert total >= 14, (duration, startup, chains)
    with capsys.disabled():
        print(f"\n[fault injection] zeroseg run: {total} kill -9 of the driver survived in "
              f"{chain} chain(s) (after {all_delays} s; an uninterrupted run takes "
              f"{duration:.0f} s, a start {startup:.0f} s), runs lost: {lost}, runs stored "
              f"twice: {duplicated}")


def _sweep_trials(store: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in _stored_runs(store) if r["kind"] == "trial" and r["sweep"] == name]


@pytest.mark.slow
def test_kill_9_of_a_sweep_driver_at_random_moments_ends_with_the_same_trials(tmp_path,
                                                                             capsys):
    """One trial at a time and per-trial seeded sampling: a sweep interrupted and resumed any
    number of times stores the trials (knobs, status, numbers) of an uninterrupted one."""
    from conftest import kill_ray_leftovers

    rng = random.Random(1515)
    work = tmp_path / "work"
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(run_config(work, methods=["pading"], seeds=[0], params={
        "pading": {"steps": 20, "batch_size": 64, "num_primitives": 8, "layers": 1,
                   "classifier": {"steps": 30, "batch_size": 128, "lr": 0.02}}})))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "pading", "config": str(config), "epochs": 2,
        "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
        "searcher": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "knobs": {"num_primitives": {"type": "int", "low": 8, "high": 24, "step": 8},
                  "tau": {"type": "uniform", "low": 0.05, "high": 0.5}}}))
    trials = 4
    ray_tmp = Path(tempfile.mkdtemp(prefix="zsf", dir="/tmp"))  # short: Ray's socket paths
    env = _env(ray_tmp)

    def summary(t: dict[str, Any]) -> tuple[Any, ...]:
        return (json.dumps(t["config"]["knobs"], sort_keys=True), t["status"],
                sorted(t["metric_rows"].items(), key=str))

    def sweep(store: Path, resume: bool) -> list[str]:
        head = ["sweep", "--resume", "s"] if resume else ["sweep", str(space), "--name", "s"]
        return [*CLI, *head, "--trials", str(trials), "--concurrency", "1", "--store",
                str(store)]

    try:
        reference_store = tmp_path / "reference" / "results.db"
        subprocess.run(sweep(reference_store, False), env=env, check=True, capture_output=True,
                       timeout=1800)  # builds the stages every sweep below reuses
        kill_ray_leftovers(str(ray_tmp))
        again_store = tmp_path / "again" / "results.db"
        started = time.monotonic()  # an uninterrupted sweep on built stages
        subprocess.run(sweep(again_store, False), env=env, check=True, capture_output=True,
                       timeout=1800)
        duration = time.monotonic() - started
        kill_ray_leftovers(str(ray_tmp))
        reference = _sweep_trials(reference_store, "s")
        assert len(reference) == trials
        assert [summary(t) for t in _sweep_trials(again_store, "s")] == \
            [summary(t) for t in reference]  # the comparison below is meaningful

        hit, delays, chain, lost, twice = 0, [], 0, 0, 0
        while hit < 8 and chain < 6:  # chains of kills, each until a resumed sweep completes
            store = tmp_path / f"killed{chain}" / "results.db"

            def start(attempt: int, store: Path = store) -> list[str]:
                registered = store.exists() and any(
                    s["name"] == "s" for s in _open_sweeps(store))
                return sweep(store, resume=registered)

            attempts = _kill_chain(start, rng, 8 - hit, duration, 8.0, env,
                                   tmp_path / f"sweep{chain}.log",
                                   after_kill=lambda: kill_ray_leftovers(str(ray_tmp)))
            chain += 1
            chain_delays = [d for how, d in attempts if how == "killed"]
            hit += len(chain_delays)
            delays += chain_delays
            got = _sweep_trials(store, "s")
            ids = [t["trial_id"] for t in got]
            lost += trials - len(set(ids))
            twice += len(ids) - len(set(ids))
            assert len(ids) == len(set(ids)) == trials, ids  # none twice, the budget done
            assert all(t["status"] in ("finished", "stopped") for t in got)
            assert [summary(t) for t in got] == [summary(t) for t in reference]
    finally:
        kill_ray_leftovers(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert hit >= 8, (duration, delays)
    with capsys.disabled():
        print(f"\n[fault injection] zeroseg sweep: {hit} kill -9 of the driver survived in "
              f"{chain} chain(s) (after {delays} s; an uninterrupted sweep takes "
              f"{duration:.0f} s), trials lost: {lost}, trials stored twice: {twice}")


def _open_sweeps(store: Path) -> list[dict[str, Any]]:
    from zeroseg.platform.store import open_store
    from zeroseg.platform.store.records import StoreError

    try:
        with open_store(store, read_only=True) as opened:
            return opened.sweeps()
    except StoreError:
        return []
