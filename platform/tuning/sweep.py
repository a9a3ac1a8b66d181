"""Sweeps: Ray Tune + Optuna (TPE) + ASHA over a search space (``zeroseg sweep``).

The driver (:func:`run_sweep`)

1. loads and validates the space and its experiment config (nothing starts on a bad one), refuses
   a sweep name that the store already has (unless resuming) and an unreachable cluster;
2. builds the shared stages once -- dataset, class embeddings, the segmenters of the validation
   and test protocols, their feature caches -- so trials only run method stages;
3. runs ``Tuner(trainable, param_space=knobs)`` with ``ConcurrencyLimiter(OptunaSearch(TPE,
   seeded, study in OPTUNA_DB next to the results store))`` and ``ASHAScheduler`` on the
   per-epoch validation objective, experiment state under ``WORK/sweeps/<name>/``;
4. :class:`StoreCallback` writes every trial to the results store as it happens: a ``running``
   row when it starts, the per-epoch objective as curve points, the full record (config,
   metrics on the validation and test protocols, audit, artifacts) when it finishes,
   ``stopped`` when ASHA ends it early, ``failed`` on an error. A trial's uid is derived from
   (sweep, trial id), so a resumed driver never duplicates a stored trial.

A trial (:func:`trial_function`, in a Ray worker) fits the method on the validation protocol in
``epochs`` rounds, reporting the validation HM after each (ASHA decides), then evaluates all
tasks, fits and evaluates the test protocol (recorded, never optimised), and reports the final
objective with the record. Worker processes keep the loaded features between trials.

``--resume NAME`` continues from zeroseg's own record of the sweep -- the results store -- and
never from the sweep folder. Ray's ``Tuner.restore`` would unpickle ``tuner.pkl`` and the
searcher state there, and anyone who can write that folder (a shared ``work_dir``, as the
cluster setup has) could make that run code; a sidecar of their sha256s in the same folder is
as easy to rewrite as the pickles. So a resume builds a new Tuner: the trials that ended
(finished, stopped early, failed) stay in the store as they are and count towards ``--trials``;
the Optuna study is rebuilt from them (their sampled values, ``config["tune_params"]``, and
objective, see :func:`_rebuild_study`), so TPE goes on from what was learnt; a trial the driver
lost while it ran (still ``running`` in the store) is deleted and its values queued to run first
again, from scratch (a trial is a short method fit on cached features). Nothing in the sweep
folder is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zeroseg.methods.registry import get_method
from zeroseg.platform.config import config_hash
from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict, run_identity
from zeroseg.platform.pipeline.config import run_config_hash
from zeroseg.platform.pipeline.runner import (
    OBJECTIVE_CURVE,
    driver_cpus,
    ray_train_slots,
    run_context,
    run_one,
)
from zeroseg.platform.store import RunRecord, open_store, trial_uid
from zeroseg.platform.training.ray_runner import ensure_ray
from zeroseg.platform.tuning.objective import optuna_storage_url
from zeroseg.platform.tuning.sampler import make_sampler
from zeroseg.platform.tuning.space import SearchSpace, base_document, load_space

log = logging.getLogger(__name__)

OBJECTIVE_KEY = "objective"  # the metric name Tune, Optuna and ASHA see
EPOCH_KEY = "epoch"


class SweepError(ZerosegError):
    """A sweep cannot start or failed."""


# -- what a trial needs (plain data, sent to the workers) -----------------------------------------
@dataclass(frozen=True)
class SweepJob:
    name: str
    space: SearchSpace
    base: dict[str, Any]  # the experiment config (plain data) the trials start from
    store_url: str
    cpus_per_trial: float = 1.0

    @property
    def objective(self) -> Any:
        return self.space.objective


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail in a few seconds, in one line, when a cluster address cannot be reached."""
    if not address or address == "auto" or address.startswith("local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise SweepError(f"--address {address}: expected ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise SweepError(f"--address {address}: cannot reach {host}:{port} "
                         f"({exc.strerror or type(exc).__name__})") from None


# -- the worker side ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_pipeline(job: SweepJob) -> Any:
    """This worker process's pipeline for the job (stages resolved once, kept for later trials).
    """
    key = config_hash(job.base)
    if _WORKER.get("key") != key:
        config = pipeline_config_from_dict(job.base, where=f"sweep {job.name}")
        _WORKER.clear()
        _WORKER.update(key=key, pipeline=Pipeline(config, progress=lambda line: None))
    return _WORKER["pipeline"]


def _node() -> str:
    import ray

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests calling the function directly)
        node = "local"
    return f"{socket.gethostname()}/{node[:12]}"


def trial_function(knobs: dict[str, Any], job: SweepJob) -> None:
    """One trial: the method on the validation protocol (per-epoch reports), then the test
    protocol; the final report carries the store record."""
    from ray import tune

    context = tune.get_context()
    trial_id = context.get_trial_id()
    space = job.space
    values = space.decode(knobs)
    doc = space.apply(job.base, values)
    doc["selected_by"] = f"sweep {job.name}: trial (validation split, held-out seen classes)"
    config = pipeline_config_from_dict(doc, where=f"sweep {job.name} trial {trial_id}")
    pipeline = _worker_pipeline(job).derive(config)
    node = _node()
    objective = space.objective

    def on_epoch(protocol: str, epoch: int, classifier: Any) -> None:
        # The per-epoch probe is the in-memory GZSL semantic evaluation; for an objective of
        # another task the trial reports once, at the end (ASHA then compares whole trials).
        if (protocol != "validation" or epoch >= space.epochs or objective.task != "semantic"
                or objective.setting != "gzsl" or classifier is None):
            return
        result = pipeline.context("validation", "zero-shot").evaluation().semantic_miou(
            classifier)
        value = getattr(result, objective.subset).get(objective.metric)
        tune.report({OBJECTIVE_KEY: float(value or 0.0), EPOCH_KEY: epoch, "final": False,
                     "node": node})

    outcome = run_one(pipeline, space.method, space.seed, kind="trial",
                      uid=trial_uid(job.name, trial_id), sweep=job.name, trial_id=trial_id,
                      protocols=["validation", *[p for p in config.evaluation.protocols
                                                 if p != "validation"]],
                      epochs={"validation": space.epochs}, on_epoch=on_epoch, record=False)
    value = outcome.metric("validation", objective.task, objective.setting, objective.subset,
                           objective.metric)
    record = outcome.record
    record.host = node
    # Tune, Optuna and ASHA need a number; an undefined objective (None in the store) is also
    # flagged, so that the progress line's "best" is the store's.
    tune.report({OBJECTIVE_KEY: float(value or 0.0), "defined": value is not None,
                 EPOCH_KEY: space.epochs, "final": True,
                 "node": node, "record": record.to_json(), "knobs": values})


# -- the driver side: trials into the store as they happen ----------------------------------------
def _callback_class() -> type:
    from ray.tune import Callback

    class StoreCallback(Callback):
        """Writes each trial to the results store (driver side, one writer)."""

        def __init__(self, job: SweepJob, split: Any, say: Callable[[str], None],
                     trials: int):
            self.job = job
            self.split = split
            self.run_ids: dict[str, int] = {}
            self.final: set[str] = set()
            # Progress: one line per ended trial, with the best finished objective so far.
            self.say, self.trials, self.ended = say, trials, 0
            self.last: dict[str, tuple[int, float | None]] = {}  # trial -> (epoch, objective)
            self.best: tuple[float, str] | None = None
            self.best_rank: tuple[float, int] = (0.0, 0)
            self.started = time.perf_counter()

        def _progress(self, trial: Any, how: str) -> None:
            self.ended += 1
            epoch, value = self.last.get(trial.trial_id, (0, None))  # None: undefined
            if how == "finished" and value is not None:
                # best_trials' order: the objective, then the run started first
                sign = -1.0 if self.job.space.mode == "max" else 1.0
                rank = (sign * value, self.run_ids.get(trial.trial_id, 0))
                if self.best is None or rank < self.best_rank:
                    self.best, self.best_rank = (value, trial.trial_id), rank
            shown = "-" if value is None else f"{100 * value:.1f}"
            best = "-" if self.best is None else f"{100 * self.best[0]:.1f} ({self.best[1]})"
            self.say(f"  trial {self.ended}/{self.trials} {trial.trial_id} {how} after {epoch} "
                     f"epoch(s): validation objective {shown}, best {best}  "
                     f"[{time.perf_counter() - self.started:.0f} s]")

        @contextlib.contextmanager
        def _store(self) -> Iterator[Any]:
            with open_store(self.job.store_url) as store:
                yield store

        def _run_id(self, store: Any, trial: Any) -> int:
            if trial.trial_id not in self.run_ids:
                uid = trial_uid(self.job.name, trial.trial_id)
                try:
                    self.run_ids[trial.trial_id] = store.resolve_run(uid)
                except ZerosegError:
                    self.run_ids[trial.trial_id] = store.record_run(self._running(trial, uid))
            return self.run_ids[trial.trial_id]

        def _running(self, trial: Any, uid: str) -> Any:
            space = self.job.space
            values = space.decode(trial.config)
            config = pipeline_config_from_dict(space.apply(self.job.base, values))
            return RunRecord(
                uid=uid, kind="trial", status="running", method=space.method,
                split=self.split.name, dataset=self.split.dataset,
                embedding=config.embedding.provider,
                backbone=config.segmenter.model.size, seed=space.seed,
                config={**run_identity(config, space.method), "seed": space.seed,
                        "knobs": values, "tune_params": dict(trial.config)},
                config_hash=run_config_hash(config, space.method), sweep=self.job.name,
                trial_id=trial.trial_id, name=self.job.name,
                leakage_audit={"hyperparameters_chosen_on":
                               "validation split (held-out seen classes)",
                               "note": "trial running; the full audit is written when it ends"})

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            with self._store() as store:
                self._run_id(store, trial)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            value = float(result[OBJECTIVE_KEY]) if result.get("defined", True) else None
            self.last[trial.trial_id] = (int(result[EPOCH_KEY]), value)
            with self._store() as store:
                run_id = self._run_id(store, trial)
                store.add_curve_points(run_id, [(OBJECTIVE_CURVE, int(result[EPOCH_KEY]),
                                                 float(result[OBJECTIVE_KEY]))])
                if result.get("final") and result.get("record"):
                    record = RunRecord.from_json(result["record"])
                    record.config = {**record.config, "knobs": result.get("knobs", {}),
                                     "tune_params": dict(trial.config)}
                    store.complete_run(run_id, record)
                    self.final.add(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            if trial.trial_id in self.final:
                self._progress(trial, "finished")
                return
            with self._store() as store:
                run = store.run(self._run_id(store, trial))
                if run["status"] == "running":  # ended before its final report: ASHA stopped it
                    store.update_status(run["id"], "stopped")
            self._progress(trial, "stopped early")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            error = getattr(trial, "error_msg", None) or "trial failed"
            with self._store() as store:
                store.update_status(self._run_id(store, trial), "failed",
                                    error=str(error).strip().splitlines()[-1][:500])
            self._progress(trial, "failed")

    return StoreCallback


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    name: str
    trials: int
    finished: int
    stopped: int
    failed: int
    best: dict[str, Any] | None
    seconds: float
    experiment_dir: Path
    resumed: bool = False
    trial_seconds: list[float] = field(default_factory=list)


def experiment_dir(work: Path, name: str) -> Path:
    return work / "sweeps" / name


def prepare_job(space_path: str | Path, name: str, *, config: str | Path | None = None,
                overrides: dict[str, Any] | None = None, store: str | None = None,
                cpus_per_trial: float = 1.0, searcher: str | None = None) -> SweepJob:
    """Everything validated before any work: space, config, knobs, store URL."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise SweepError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    space = load_space(space_path, config=config)
    if searcher is not None:
        space.searcher = {**space.searcher, "type": searcher}
    base = base_document(space, overrides)
    validate_space_with_base(space, base)
    work = Path(base["work_dir"]).expanduser().resolve()
    base["work_dir"] = str(work)
    base["data"]["root"] = str(Path(base["data"]["root"]).expanduser().resolve())
    store_url = store or base.get("store") or os.environ.get("ZEROSEG_STORE") or str(
        work / "results.db")
    base["store"] = store_url
    cpus_per_trial = driver_cpus(space.method,
                                 int((base.get("method_training") or {}).get("workers", 1)),
                                 cpus_per_trial)
    return SweepJob(name=name, space=space, base=base, store_url=store_url,
                    cpus_per_trial=cpus_per_trial)


def validate_space_with_base(space: SearchSpace, base: dict[str, Any]) -> None:
    sample = {name: knob.extremes()[-1] for name, knob in space.knobs.items()}
    pipeline_config_from_dict(space.apply(base, sample), where=str(space.path))


def run_sweep(job: SweepJob, *, trials: int, concurrency: int, address: str | None = None,
              resume: bool = False, progress: Callable[[str], None] | None = None,
              verbose: bool = False) -> SweepResult:
    """Run (or resume) sweep ``job.name`` with ``trials`` trials, ``concurrency`` at a time."""
    say = progress or (lambda line: log.info("%s", line))
    # Tune's automatic CSV / JSON / TensorBoard loggers would copy every record into the
    # experiment folder; the results store is where trials go.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if trials < 1 or concurrency < 1:
        raise SweepError(f"--trials and --concurrency must be >= 1, got {trials}, "
                         f"{concurrency}")
    check_address(address)
    work = Path(job.base["work_dir"])
    exp_dir = experiment_dir(work, job.name)
    config = pipeline_config_from_dict(job.base, where=f"sweep {job.name}")
    pipeline = Pipeline(config, progress=say, verbose=verbose, ray_address=address)
    pipeline.check_outputs()  # store, work dir: one-line errors now, not after the segmenters
    pipeline.check_inputs()  # data files, class vectors: likewise
    with open_store(job.store_url) as store:
        existing = {s["name"]: s for s in store.sweeps()}
        if job.name in existing and not resume:
            raise SweepError(f"--name {job.name}: a sweep of that name is already in "
                             f"{store.display}; pick another name or add --resume")
        if resume and job.name not in existing:
            raise SweepError(f"--resume {job.name}: no such sweep in {store.display} (a sweep "
                             "resumes from the store that recorded it)")
        past = _past_trials(store, job) if resume else PastTrials()
        store.upsert_sweep(job.name, method=job.space.method, space=job.space.describe(),
                           objective=job.objective.name, mode=job.space.mode,
                           settings={"trials": trials, "concurrency": concurrency,
                                     "searcher": job.space.searcher,
                                     "scheduler": job.space.scheduler,
                                     "epochs": job.space.epochs, "address": address,
                                     "experiment_dir": str(exp_dir), "work_dir": str(work),
                                     "threads": job.base.get("threads", 1),
                                     "config": str(job.space.config_path)},
                           status="running")
    started = time.perf_counter()
    # The shared stages, once, before any trial: segmenters and feature caches (none for a
    # model method, which trains its own model in each trial).
    spec = get_method(job.space.method)
    for protocol in config.evaluation.protocols:
        run_context(pipeline, spec, protocol)

    remaining = trials - len(past.ended)
    if resume:
        say(f"resuming sweep {job.name}: {len(past.ended)} trial(s) ended before, kept; "
            f"{len(past.lost)} interrupted, run again from scratch; {max(remaining, 0)} to run")
        with open_store(job.store_url) as store:
            for run_id in past.lost_run_ids:
                store.delete_run(run_id)
    if remaining < 1:
        with open_store(job.store_url) as store:
            store.upsert_sweep(job.name, status="finished")
        return _summary(job, exp_dir, time.perf_counter() - started, resume)
    ensure_ray(address, verbose=verbose)
    import ray

    slots = ray_train_slots(job.space.method, config.method_training,
                            float(ray.cluster_resources().get("CPU", 1.0)))
    if slots is not None and concurrency > slots:
        say(f"--concurrency {concurrency}: each trial's Ray Train job needs "
            f"{config.method_training.workers} x {config.method_training.cpus_per_worker:g} CPUs; "
            f"{slots} fit on this cluster at once, so {slots} trial(s) run at a time")
        concurrency = slots
    tuner = _tuner(job, trials=remaining, concurrency=concurrency, exp_dir=exp_dir, past=past,
                   say=say, split=pipeline.split)
    # With the auto loggers off, Tune's result grid has no per-trial files to read and warns
    # about each trial at the end; the store holds the results, so that warning is noise.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    status = "failed"
    try:
        tuner.fit()
        status = "finished"
    except KeyboardInterrupt:
        status = "stopped"
        raise
    finally:
        with open_store(job.store_url) as store:
            store.upsert_sweep(job.name, status=status)
    return _summary(job, exp_dir, time.perf_counter() - started, resume)


@dataclass
class PastTrials:
    """What the store says about the trials of a sweep being resumed."""

    ended: list[dict[str, Any]] = field(default_factory=list)  # finished, stopped, failed
    lost: list[dict[str, Any]] = field(default_factory=list)  # "running": the driver died
    values: dict[int, float | None] = field(default_factory=dict)  # run id -> last objective

    @property
    def lost_run_ids(self) -> list[int]:
        return [int(t["id"]) for t in self.lost]


def _past_trials(store: Any, job: SweepJob) -> PastTrials:
    past = PastTrials()
    for run in store.runs(sweep=job.name, kind="trial", full=True, newest_first=False):
        (past.lost if run["status"] == "running" else past.ended).append(run)
        curve = store.curves(run["id"], OBJECTIVE_CURVE)
        past.values[int(run["id"])] = curve[-1]["value"] if curve else None
    return past


def _rebuild_study(job: SweepJob, storage: Any, past: PastTrials) -> None:
    """The sweep's Optuna study, rebuilt in ``storage`` from the store: each ended trial as
    Ray's OptunaSearch would have told it (finished or stopped early: COMPLETE with its last
    objective; stopped before any report: PRUNED; failed: FAIL), then the interrupted trials'
    values queued (``enqueue_trial``) so they are the first ones asked for again."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=job.name, storage=storage)
    study = optuna.create_study(study_name=job.name, storage=storage,
                                direction="maximize" if job.space.mode == "max" else "minimize")
    distributions = OptunaSearch.convert_search_space(job.space.tune_space())
    State = optuna.trial.TrialState
    for run in past.ended:
        params = (run["config"] or {}).get("tune_params")
        if not isinstance(params, dict) or set(params) != set(distributions):
            log.warning("sweep %s: trial %s has no sampled values on record (stored by an "
                        "older zeroseg); the searcher resumes without it", job.name,
                        run["trial_id"])
            continue
        value = past.values.get(int(run["id"]))
        state = (State.FAIL if run["status"] == "failed" else
                 State.COMPLETE if value is not None else State.PRUNED)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, state=state,
            value=value if state == State.COMPLETE else None))
    for run in past.lost:
        params = (run["config"] or {}).get("tune_params")
        if isinstance(params, dict) and set(params) == set(distributions):
            study.enqueue_trial(params)


def _tuner(job: SweepJob, *, trials: int, concurrency: int, exp_dir: Path, past: PastTrials,
           say: Callable[[str], None], split: Any) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    space = job.space
    trainable = tune.with_resources(tune.with_parameters(trial_function, job=job),
                                    {"cpu": job.cpus_per_trial})
    callbacks = [_callback_class()(job, split, say, trials)]
    # Trial n draws with a sampler seeded by (seed, n): a resumed sweep draws what the
    # uninterrupted one would have (one trial at a time; see .sampler).
    sampler = make_sampler(space.searcher)
    storage_url = optuna_storage_url(job.store_url)
    storage = (optuna.storages.RDBStorage(storage_url) if storage_url
               else optuna.storages.InMemoryStorage())
    _rebuild_study(job, storage, past)
    searcher = ConcurrencyLimiter(
        OptunaSearch(metric=OBJECTIVE_KEY, mode=space.mode, sampler=sampler,
                     study_name=job.name, storage=storage), max_concurrent=concurrency)
    if space.scheduler.get("type") == "fifo":
        scheduler: Any = FIFOScheduler()
    else:
        scheduler = ASHAScheduler(time_attr=EPOCH_KEY, max_t=space.epochs,
                                  grace_period=int(space.scheduler.get("grace_period", 1)),
                                  reduction_factor=float(space.scheduler.get(
                                      "reduction_factor", 2)))
    return tune.Tuner(
        trainable, param_space=space.tune_space(),
        tune_config=tune.TuneConfig(metric=OBJECTIVE_KEY, mode=space.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=trials,
                                    reuse_actors=True),  # concurrency: the ConcurrencyLimiter
        run_config=tune.RunConfig(name=job.name, storage_path=str(exp_dir.parent),
                                  callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)))


def _summary(job: SweepJob, exp_dir: Path, seconds: float, resumed: bool) -> SweepResult:
    with open_store(job.store_url) as store:
        runs = store.runs(sweep=job.name, kind="trial")
        best = best_trials(store, job.name, top=1)
    counts = {s: sum(1 for r in runs if r["status"] == s) for s in ("finished", "stopped",
                                                                   "failed")}
    return SweepResult(name=job.name, trials=len(runs), finished=counts["finished"],
                       stopped=counts["stopped"], failed=counts["failed"],
                       best=best[0] if best else None, seconds=seconds, experiment_dir=exp_dir,
                       resumed=resumed,
                       trial_seconds=[r["duration_s"] for r in runs if r["duration_s"]])


def best_trials(store: Any, sweep: str, top: int = 1) -> list[dict[str, Any]]:
    """The ``top`` finished trials of ``sweep`` by its objective (from the store); of equal
    values, the one started first."""
    info = next((s for s in store.sweeps() if s["name"] == sweep), None)
    if info is None:
        raise SweepError(f"sweep {sweep!r}: not in store {store.display}")
    _, task, setting, subset, metric = info["objective"].split("/")
    rows = store.metrics_frame(per_class=False, sweep=sweep, kind="trial", status="finished",
                               eval_split="val", metric_task=task, setting=setting,
                               subset=subset, metric=metric)
    sign = -1.0 if info.get("mode", "max") == "max" else 1.0
    # Ties go to the trial started first (the lower run id), as the progress line says.
    ranked = sorted((r for r in rows if r["value"] is not None),
                    key=lambda r: (sign * r["value"], r["run_id"]))
    return [{"run_id": r["run_id"], "trial_id": r["trial_id"], "value": r["value"],
             "objective": info["objective"]} for r in ranked[:top]]


__all__ = ["ConfigError", "SweepError", "SweepJob", "SweepResult", "best_trials",
           "check_address", "prepare_job", "run_sweep", "trial_function"]
