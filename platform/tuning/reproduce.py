"""``zeroseg reproduce NAME --top K --seeds S``: re-run a sweep's best configs from scratch.

For each of the ``K`` best finished trials (by the sweep's validation objective) the trial's
experiment config -- the sweep's base config with the trial's knob values, as stored in the
run -- is run again with ``S`` seeds: the trial's own seed first, then the next ones. Stages
are looked up by the hash of their inputs, so whatever the trial's config shares with existing
artifacts (dataset, segmenters, feature caches) is reused and anything whose inputs changed is
rebuilt. Each reproduction is stored as ``kind = reproduction`` with ``source_run_id`` pointing
at its trial, and its audit says the hyperparameters were chosen on the validation split.

The report gives mean +- std of every metric over the seeds, whether the sweep's value lies
within the seeds' spread (mean +- 2 std, or the range when that is wider), and whether the run
with the trial's own seed reproduced the trial's metrics exactly (the same config and seed on
the same machine must give the same numbers).
"""

from __future__ import annotations

import copy
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict
from zeroseg.platform.pipeline.config import PROTOCOLS
from zeroseg.platform.pipeline.runner import RunJob, run_many
from zeroseg.platform.store import open_store
from zeroseg.platform.tuning.sweep import SweepError, best_trials

log = logging.getLogger(__name__)


@dataclass
class Reproduction:
    source_run_id: int
    trial_id: str | None
    sweep_value: float
    objective: str
    runs: list[Any] = field(default_factory=list)  # RunOutcome per seed
    values: list[float | None] = field(default_factory=list)  # the objective per seed
    exact: bool | None = None  # the trial's own seed gave the trial's metrics exactly
    mismatches: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        defined = [v for v in self.values if v is not None]
        return statistics.fmean(defined) if defined else None

    @property
    def std(self) -> float | None:
        defined = [v for v in self.values if v is not None]
        return statistics.stdev(defined) if len(defined) > 1 else None

    @property
    def within_spread(self) -> bool | None:
        defined = [v for v in self.values if v is not None]
        if not defined:
            return None
        mean, std = self.mean, self.std or 0.0
        low, high = min(mean - 2 * std, min(defined)), max(mean + 2 * std, max(defined))
        return low - 1e-12 <= self.sweep_value <= high + 1e-12


def trial_document(run: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """The experiment config (plain data) of a stored trial."""
    config = copy.deepcopy(run["config"])
    method = config.pop("method")
    params = config.pop("params")
    seed = config.pop("seed", 0)
    config.pop("knobs", None)
    config.pop("tune_params", None)
    doc = {**config, "methods": [method], "params": {method: params}, "seeds": [seed],
           "name": f"{sweep['name']}-reproduce"}
    settings = sweep.get("settings") or {}
    for key in ("work_dir", "threads"):
        if settings.get(key) is not None:
            doc[key] = settings[key]
    doc["evaluation"]["protocols"] = [p for p in PROTOCOLS
                                      if p in doc["evaluation"]["protocols"]]
    return doc


@dataclass
class ReproductionPlan:
    """The runs of a reproduction (:func:`plan_reproductions`), to be run by
    :func:`~zeroseg.platform.pipeline.runner.run_many` (alone or beside other runs) and then
    read by :meth:`finish`."""
    reproductions: list[Reproduction]
    jobs: list[Any]  # RunJob per trial x seed, in that order
    pipeline: Any  # the first trial's Pipeline (stages shared by all)
    sources: dict[int, dict[str, Any]]
    seeds: int
    say: Callable[[str], None]

    @property
    def objective(self) -> tuple[str, str, str, str]:
        _, task, setting, subset, metric = self.reproductions[0].objective.split("/")
        return task, setting, subset, metric

    def value(self, outcome: Any) -> float | None:
        return outcome.metric("validation", *self.objective)

    def on_run(self, outcome: Any) -> None:
        """A progress line for a reproduction run that ended (or was stored before)."""
        value = self.value(outcome)
        shown = "-" if value is None else f"{100 * value:.2f}"
        how = ("stored before, reused" if outcome.reused else
               f"{outcome.status} in {outcome.seconds:.0f} s")
        self.say(f"  reproduction of run {outcome.record.source_run_id} with seed "
                 f"{outcome.seed}: {how}, {self.reproductions[0].objective} {shown} "
                 f"(run {outcome.run_id})")

    def finish(self, outcomes: list[Any]) -> list[Reproduction]:
        """Fill the reproductions from the outcomes of :attr:`jobs` (same order)."""
        runs = iter(outcomes)
        for rep in self.reproductions:
            rep.runs = [next(runs) for _ in range(self.seeds)]
            rep.values = [self.value(o) for o in rep.runs]
            # The first seed of each trial's jobs is the trial's own (plan_reproductions).
            rep.exact, rep.mismatches = _compare(self.sources[rep.source_run_id], rep.runs[0])
        return self.reproductions


def plan_reproductions(store_url: str, sweep: str, *, top: int = 1, seeds: int = 3,
                       trial: str | None = None,
                       progress: Callable[[str], None] | None = None) -> ReproductionPlan:
    """The K best finished trials of ``sweep`` (or ``trial``), each to be re-run with ``seeds``
    seeds from the trial's own; refuses a bad request before anything runs."""
    say = progress or (lambda line: log.info("%s", line))
    if top < 1 or seeds < 1:
        raise SweepError(f"--top and --seeds must be >= 1, got {top}, {seeds}")
    with open_store(store_url, create=False) as store:
        info = next((s for s in store.sweeps() if s["name"] == sweep), None)
        if info is None:
            raise SweepError(f"sweep {sweep!r}: not in store {store.display} (`zeroseg "
                             f"results sweeps --store {store.display}` lists them)")
        ranked = best_trials(store, sweep, top=10_000)
        if trial is not None:
            ranked = [r for r in ranked if r["trial_id"] == trial]
            if not ranked:
                raise SweepError(f"--trial {trial}: no finished trial of that id in sweep "
                                 f"{sweep!r}")
        chosen = ranked[:top]
        if not chosen:
            raise SweepError(f"sweep {sweep!r}: no finished trial to reproduce yet")
        sources = {c["run_id"]: store.run(c["run_id"]) for c in chosen}
    reps, jobs, pipeline = [], [], None
    for rank, best in enumerate(chosen, 1):
        doc = trial_document(sources[best["run_id"]], info)
        base_seed = int(doc["seeds"][0])
        doc["seeds"] = [base_seed + i for i in range(seeds)]
        doc["selected_by"] = (f"validation split (held-out seen classes): sweep {sweep}, trial "
                              f"{best['trial_id']} (rank {rank}, {info['objective']})")
        doc["store"] = store_url
        config = pipeline_config_from_dict(doc, where=f"reproduction of run {best['run_id']}")
        pipeline = pipeline.derive(config) if pipeline else Pipeline(config, progress=say)
        reps.append(Reproduction(best["run_id"], best["trial_id"], best["value"],
                                 info["objective"]))
        jobs += [RunJob(config, config.methods[0], seed, kind="reproduction",
                        source_run_id=best["run_id"]) for seed in config.seeds]
        say(f"reproducing trial {best['trial_id']} (run {best['run_id']}, {sweep} rank {rank}) "
            f"with seeds {', '.join(map(str, config.seeds))}")
    return ReproductionPlan(reps, jobs, pipeline, sources, seeds, say)


def reproduce(store_url: str, sweep: str, *, top: int = 1, seeds: int = 3,
              trial: str | None = None, progress: Callable[[str], None] | None = None,
              force: bool = False) -> list[Reproduction]:
    """Plan the reproductions and run all seeds of all trials side by side (as many at once as
    Ray has CPUs for); each run is stored as it ends. Reproductions stored before are reused
    (``force``: re-run and replaced)."""
    plan = plan_reproductions(store_url, sweep, top=top, seeds=seeds, trial=trial,
                              progress=progress)
    plan.pipeline.check_outputs()
    plan.pipeline.check_inputs()  # data files, class vectors: likewise
    return plan.finish(run_many(plan.pipeline, plan.jobs, on_run=plan.on_run, force=force))


def _compare(source: dict[str, Any], outcome: Any) -> tuple[bool, list[str]]:
    """Do the reproduction's seen / unseen / HM rows equal the trial's, to the last digit?"""
    stored = {(m["task"], m["setting"], m["eval_split"], m["subset"], m["class_name"],
               m["metric"]): m["value"] for m in source["metrics"]}
    mismatches = []
    for m in outcome.record.metrics:
        key = (m.task, m.setting, m.eval_split, m.subset, m.class_name, m.metric)
        if key in stored and stored[key] != m.value:
            mismatches.append(f"{'/'.join(str(k) for k in key if k)}: {stored[key]} vs "
                              f"{m.value}")
    if not any(k in stored for k in ((m.task, m.setting, m.eval_split, m.subset, m.class_name,
                                      m.metric) for m in outcome.record.metrics)):
        mismatches.append("no metric in common with the trial")
    return not mismatches, mismatches


def format_reproductions(reps: list[Reproduction]) -> str:
    lines = []
    for rep in reps:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}"

        std = rep.std
        spread = f"{pct(rep.mean)} ± {pct(std)}" if std is not None else pct(rep.mean)
        within = {True: "yes", False: "NO", None: "-"}[rep.within_spread]
        exact = {True: "yes", False: "NO", None: "-"}[rep.exact]
        lines.append(f"trial {rep.trial_id} (run {rep.source_run_id}): sweep {rep.objective} = "
                     f"{pct(rep.sweep_value)}; reproduced over {len(rep.values)} seed(s): "
                     f"{spread} (values {', '.join(pct(v) for v in rep.values)}); sweep value "
                     f"within the spread: {within}; same seed reproduced exactly: {exact}")
        for mismatch in rep.mismatches[:5]:
            lines.append(f"    differs: {mismatch}")
    return "\n".join(lines)


__all__ = ["Reproduction", "ReproductionPlan", "ZerosegError", "format_reproductions",
           "plan_reproductions", "reproduce"]
