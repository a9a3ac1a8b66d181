"""Sweeps: search spaces as data, Ray Tune + Optuna + ASHA trials into the store, resume after
SIGINT and SIGKILL, reproductions, a sweep on a two-node Ray cluster.

The sweeps run on the tiny synthetic benchmark with a 20-step segmenter trained once for the
module (its artifacts are shared by every sweep through the work dir).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from zeroseg.platform.errors import ConfigError
from zeroseg.platform.tuning.space import load_space, parse_knob
from zeroseg.platform.tuning.sweep import SweepError, check_address

REPO = Path(__file__).resolve().parents[1]
KNOBS = {
    "num_primitives": {"type": "int", "low": 8, "high": 32, "step": 8},
    "structure_weight": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-1},
    "tau": {"type": "uniform", "low": 0.05, "high": 0.5},
    "sigmas": {"type": "choice", "values": ["paper", "code", [1, 2, 4, 8]]},
}


def base_config(root: Path, work: Path) -> dict[str, Any]:
    return {
        "methods": ["pading"],
        "data": {"root": str(root), "synthetic": {"size": "tiny", "seed": 0}},
        "embedding": {"provider": "attributes", "options": {"dim": 32}},
        "segmenter": {"model": {"size": "tiny", "train_num_points": 1024},
                      "optim": {"lr": 0.001, "grad_clip": 1.0},
                      "train": {"steps": 20, "batch_size": 4, "checkpoint_every": 20},
                      "distributed": {"workers": 0, "zero_stage": 0}},
        "features": {"batch_size": 16, "shard_size": 32},
        "evaluation": {"protocols": ["validation", "test"], "settings": ["gzsl"]},
        "params": {"pading": {"steps": 40, "batch_size": 64, "num_primitives": 16,
                              "layers": 1, "classifier": {"steps": 80, "batch_size": 128,
                                                          "lr": 0.02}}},
        "work_dir": str(work),
    }


def write_space(path: Path, experiment: Path, changes: dict[str, Any] | None = None,
                extra_knobs: dict[str, Any] | None = None) -> Path:
    """A search space file: the defaults below with dotted ``changes`` (None deletes a key)
    and ``extra_knobs`` (knob names may contain dots)."""
    doc = {"method": "pading", "config": str(experiment), "epochs": 2,
           "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
           "searcher": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
           "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
           "knobs": json.loads(json.dumps(KNOBS))}
    for key, value in (changes or {}).items():
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    doc["knobs"].update(extra_knobs or {})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict

    base = tmp_path_factory.mktemp("tuning")
    config = base / "exp.yaml"
    config.write_text(yaml.safe_dump(base_config(base / "tiny", base / "work")))
    pipeline = Pipeline(pipeline_config_from_dict(yaml.safe_load(config.read_text())))
    for protocol in ("validation", "test"):
        pipeline.context(protocol, "zero-shot")  # trained once, shared by every sweep below
    return {"base": base, "config": config, "space": write_space(base / "space.yaml", config)}


# -- search spaces --------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, extra, needle", [
    ({"knobs": {}}, None, "search space is empty"),
    ({"knobs.tau": {"type": "uniform", "low": 0.5, "high": 0.1}}, None, "must be below high"),
    ({"knobs.num_primitives": {"type": "int", "low": 8, "high": 30, "step": 8}}, None,
     "does not divide"),
    ({"knobs.structure_weight": {"type": "loguniform", "low": 0, "high": 1}}, None,
     "loguniform needs low > 0"),
    ({"knobs.tau": {"type": "gaussian", "low": 0, "high": 1}}, None, "knobs.tau.type"),
    ({"knobs.tau": {"type": "choice", "values": []}}, None, "non-empty list"),
    ({}, {"num_primitivs": {"type": "int", "low": 8, "high": 16}},
     "did you mean 'num_primitives'"),
    ({}, {"alignment": {"type": "choice", "values": [True, False]}},
     "fixed by method 'pading'"),
    ({"knobs.tau": {"type": "uniform", "low": -1.0, "high": 0.5}}, None, "tau must be > 0"),
    ({"method": "padding"}, None, "unknown method 'padding'"),
    ({"objective.metric": "pq"}, None, "objective.metric"),
    ({"schedule": "asha"}, None, "unknown key 'schedule'"),
    ({"config": "missing.yaml"}, None, "missing.yaml not found"),
    ({}, {"evaluation.inference.object_mask_threshold":
          {"type": "uniform", "low": 0.5, "high": 1.5}}, "object_mask_threshold"),
])
def test_bad_search_spaces_fail_in_one_line(setup, tmp_path, changes, extra, needle):
    path = write_space(tmp_path / "s.yaml", setup["config"], changes, extra)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_knobs_sample_decode_and_apply(setup):
    space = load_space(setup["space"])
    tune_space = space.tune_space()
    base = yaml.safe_load(setup["config"].read_text())
    for _ in range(20):
        sample = {k: d.sample() for k, d in tune_space.items()}
        values = space.decode(sample)
        assert values["num_primitives"] in (8, 16, 24, 32)
        assert 1e-4 <= values["structure_weight"] <= 1e-1
        assert values["sigmas"] in ("paper", "code", [1, 2, 4, 8])
        doc = space.apply(base, values)
        assert doc["params"]["pading"]["tau"] == values["tau"]
        assert doc["params"]["pading"]["classifier"]["steps"] == 80  # base kept
    knob = parse_knob("x", {"type": "choice", "values": [[1, 2], "a", 3]}, "w")
    assert [knob.decode(label) for label in knob.labels()] == [[1, 2], "a", 3]


def test_unreachable_cluster_address_fails_fast():
    started = time.monotonic()
    with pytest.raises(SweepError, match="cannot reach 127.0.0.1:9"):
        check_address("ray://127.0.0.1:9", timeout=2)
    assert time.monotonic() - started < 5
    with pytest.raises(SweepError, match="expected ray://HOST:PORT"):
        check_address("ray://nohost")


@pytest.mark.parametrize("searcher", ["tpe", "random"])
def test_a_rebuilt_study_draws_what_the_uninterrupted_one_drew(searcher):
    """A resumed sweep rebuilds its Optuna study from the store; with per-trial seeds its next
    trials get the values the uninterrupted sweep's got (one trial at a time)."""
    import optuna

    from zeroseg.platform.tuning.sampler import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0),
             "k": optuna.distributions.IntDistribution(8, 32, step=8),
             "c": optuna.distributions.CategoricalDistribution([0, 1, 2])}
    settings = {"type": searcher, "seed": 3, "n_startup_trials": 2}

    def run(study: Any, n: int) -> None:
        for _ in range(n):
            trial = study.ask(fixed_distributions=space)
            study.tell(trial, (trial.params["x"] - 0.3) ** 2 + trial.params["k"] / 100
                       + trial.params["c"])

    whole = optuna.create_study(sampler=make_sampler(settings))
    run(whole, 7)
    resumed = optuna.create_study(sampler=make_sampler(settings))
    for trial in whole.trials[:4]:
        resumed.add_trial(optuna.trial.create_trial(params=trial.params, distributions=space,
                                                    value=trial.value))
    run(resumed, 3)
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert len({json.dumps(t.params) for t in whole.trials}) == 7  # not one value repeated


# -- sweeps ---------------------------------------------------------------------------------------
def _trials(store_path: Path, name: str) -> list[dict[str, Any]]:
    from zeroseg.platform.store import open_store

    with open_store(store_path) as store:
        return store.runs(sweep=name, kind="trial", full=True)


@pytest.fixture(scope="module")
def sweep(setup) -> dict[str, Any]:
    from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

    store = setup["base"] / "sweep.db"
    job = prepare_job(setup["space"], "s1", store=str(store))
    lines: list[str] = []
    result = run_sweep(job, trials=4, concurrency=2, progress=lines.append)
    return {"job": job, "result": result, "store": store, "lines": lines}


def test_sweep_writes_every_trial_with_validation_and_test_metrics(sweep):
    from zeroseg.platform.store import open_store

    trials = _trials(sweep["store"], "s1")
    assert len(trials) == 4 == sweep["result"].trials
    assert len({t["trial_id"] for t in trials}) == 4
    statuses = {t["status"] for t in trials}
    assert statuses <= {"finished", "stopped"} and "finished" in statuses
    with open_store(sweep["store"]) as store:
        for t in trials:
            run = store.run(t["id"])
            curve = [c for c in run["curves"] if c["name"] == "val/hm"]
            assert curve and curve[0]["step"] == 1
            assert set(run["config"]["knobs"]) == set(KNOBS)
            if t["status"] == "finished":
                splits = {m["eval_split"] for m in run["metrics"]}
                assert splits == {"val", "test"}  # test recorded, never optimised
                assert run["leakage_audit"]["hyperparameters_chosen_on"].startswith("sweep s1")
                assert {c["step"] for c in curve} == {1, 2}
        info = next(s for s in store.sweeps() if s["name"] == "s1")
    assert info["status"] == "finished" and info["objective"] == "val/semantic/gzsl/hm/iou"
    assert info["space"]["knobs"]["sigmas"]["values"][2] == [1, 2, 4, 8]
    optuna_db = sweep["store"].with_name("optuna.db")
    assert optuna_db.is_file()
    import optuna

    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{optuna_db}")
    assert len(study.trials) == 4

    # The progress display: one line per ended trial, counting up, with the best so far.
    ended = [ln for ln in sweep["lines"] if ln.lstrip().startswith("trial ")]
    assert [ln.split()[1] for ln in ended] == ["1/4", "2/4", "3/4", "4/4"]
    assert {ln.split()[2] for ln in ended} == {t["trial_id"] for t in trials}
    best = max(sweep["result"].best["value"], 0)
    # Trials tied at the best value: the progress line names the first of them that ended.
    tied = {t["trial_id"] for t in trials if t["status"] == "finished" and
            sweep["result"].best["value"] == _objective(sweep["store"], t["id"])}
    assert any(f"best {100 * best:.1f} ({trial_id})" in ended[-1] for trial_id in tied), \
        (ended[-1], tied)


def _objective(store_path: Path, run_id: int) -> float | None:
    from zeroseg.platform.store import open_store

    with open_store(store_path) as store:
        return next((m["value"] for m in store.run(run_id)["metrics"]
                     if (m["eval_split"], m["task"], m["setting"], m["subset"], m["metric"]) ==
                     ("val", "semantic", "gzsl", "hm", "iou")), None)


def test_an_existing_sweep_name_is_refused_without_resume(sweep):
    from zeroseg.platform.tuning.sweep import run_sweep

    with pytest.raises(SweepError, match="already in"):
        run_sweep(sweep["job"], trials=1, concurrency=1)


def test_reproduce_reruns_the_best_trial_exactly(sweep):
    from zeroseg.platform.store import open_store
    from zeroseg.platform.tuning.reproduce import format_reproductions, reproduce
    from zeroseg.platform.tuning.sweep import best_trials

    reps = reproduce(str(sweep["store"]), "s1", top=1, seeds=2)
    assert len(reps) == 1
    rep = reps[0]
    with open_store(sweep["store"]) as store:
        best = best_trials(store, "s1", top=1)[0]
        runs = [store.run(o.run_id) for o in rep.runs]
    assert rep.source_run_id == best["run_id"] and rep.sweep_value == best["value"]
    assert rep.exact is True, rep.mismatches
    assert rep.values[0] == best["value"]
    assert rep.within_spread is True
    assert [r["kind"] for r in runs] == ["reproduction"] * 2
    assert {r["source_run_id"] for r in runs} == {best["run_id"]}
    assert [r["seed"] for r in runs] == [0, 1]
    assert "sweep s1" in runs[0]["leakage_audit"]["hyperparameters_chosen_on"]
    assert "exactly: yes" in format_reproductions(reps)


class _Payload:
    """Unpickling this writes ``marker`` (a crafted pickle in a sweep folder)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def test_resume_never_unpickles_the_sweep_folder(setup, tmp_path):
    """Anyone who can write a (shared) sweep folder can replace Tune's pickles there. A resume
    rebuilds the sweep from the store instead: a crafted tuner.pkl / searcher state never runs,
    the finished trial is kept and the budget is completed."""
    import pickle

    from zeroseg.platform.tuning.sweep import experiment_dir, prepare_job, run_sweep

    store = tmp_path / "store.db"
    space = write_space(tmp_path / "fifo.yaml", setup["config"],
                        {"scheduler": {"type": "fifo"}, "epochs": 1})
    job = prepare_job(space, "crafted", store=str(store))
    run_sweep(job, trials=1, concurrency=1)
    first = _trials(store, "crafted")
    assert [t["status"] for t in first] == ["finished"]
    assert first[0]["config"]["tune_params"].keys() == KNOBS.keys()

    folder = experiment_dir(Path(job.base["work_dir"]), "crafted")
    marker = tmp_path / "marker"
    pickles = [*folder.glob("*.pkl"), folder / "tuner.pkl", folder / "searcher-state-x.pkl"]
    for path in set(pickles):
        path.write_bytes(pickle.dumps(_Payload(marker)))
    crafted = (folder / "tuner.pkl").read_bytes()
    lines: list[str] = []
    result = run_sweep(job, trials=2, concurrency=1, resume=True, progress=lines.append)
    assert not marker.exists()
    after = _trials(store, "crafted")
    assert result.trials == len(after) == 2 and len({t["trial_id"] for t in after}) == 2
    kept = next(t for t in after if t["trial_id"] == first[0]["trial_id"])
    assert kept["id"] == first[0]["id"] and kept["finished_at"] == first[0]["finished_at"]
    assert any("1 trial(s) ended before, kept" in line for line in lines), lines
    import optuna

    study = optuna.load_study(study_name="crafted",
                              storage=f"sqlite:///{store.with_name('optuna.db')}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].params == first[0]["config"]["tune_params"]

    # The pickles are live: Ray's Tuner.restore would have run them.
    pickle.loads(crafted)  # noqa: S301 - proving the payload works, on purpose
    assert marker.read_text() == "payload ran"


# -- resume after the driver is stopped -----------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_resume_after_the_driver_is_stopped_loses_and_duplicates_nothing(setup, tmp_path, sig):
    from conftest import kill_ray_leftovers

    name = f"resume-{sig.name.lower()}"
    store = tmp_path / "store.db"
    # A Ray temp dir of its own (short: Ray's socket paths must fit 107 bytes), to find the
    # processes a killed driver leaves behind.
    temp = Path(tempfile.mkdtemp(prefix="zsr", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "zeroseg.platform.cli", "sweep", str(setup["space"]),
           "--name", name, "--trials", "5", "--concurrency", "1", "--store", str(store)]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    done: list[dict[str, Any]] = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        if store.is_file():
            done = [t for t in _trials(store, name) if t["status"] in ("finished", "stopped")]
            if len(done) >= 2:
                break
    assert len(done) >= 2, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
    proc.wait(timeout=60)
    kill_ray_leftovers(str(temp))
    before = {t["trial_id"]: t for t in _trials(store, name)
              if t["status"] in ("finished", "stopped")}
    resume = [sys.executable, "-m", "zeroseg.platform.cli", "sweep", "--resume", name,
              "--trials", "5", "--concurrency", "1", "--store", str(store)]
    second = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
    kill_ray_leftovers(str(temp))
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    after = _trials(store, name)
    ids = [t["trial_id"] for t in after]
    assert len(ids) == len(set(ids)) == 5, ids  # nothing duplicated, the budget completed
    assert all(t["status"] in ("finished", "stopped") for t in after), \
        [(t["trial_id"], t["status"]) for t in after]
    for trial_id, old in before.items():  # completed trials kept, unchanged
        new = next(t for t in after if t["trial_id"] == trial_id)
        assert new["id"] == old["id"] and new["status"] == old["status"]
        assert new["finished_at"] == old["finished_at"]


# -- a two-node cluster ---------------------------------------------------------------------------
def test_sweep_on_a_two_node_cluster_uses_both_nodes(setup, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from zeroseg.platform.compat import ray_runtime_env
    from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env=ray_runtime_env({}),
                 include_dashboard=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        store = tmp_path / "cluster.db"
        space = write_space(tmp_path / "fifo.yaml", setup["config"],
                            {"scheduler": {"type": "fifo"}})  # every trial runs to the end
        job = prepare_job(space, "two-nodes", store=str(store))
        result = run_sweep(job, trials=4, concurrency=2, address=None)
        trials = _trials(store, "two-nodes")
        assert result.trials == len(trials) == 4
        finished = [t for t in trials if t["status"] == "finished"]
        nodes = {t["host"] for t in finished}
        assert len(nodes) == 2, nodes  # 1 CPU per node, 2 trials at a time: both nodes
        alive = {n["NodeID"][:12] for n in ray.nodes() if n["Alive"]}
        assert {h.split("/")[1] for h in nodes} == alive
    finally:
        ray.shutdown()
        cluster.shutdown()
