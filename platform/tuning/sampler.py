"""Optuna sampling that depends on a trial's number, not on how many draws came before it.

Optuna's samplers draw from one random stream: trial ``n``'s values depend on every draw of the
trials before it *in this process*. A sweep resumed after its driver died starts a new process
(``zeroseg sweep --resume``, see :mod:`.sweep`), so it would draw other values than the sweep
that was not interrupted. :class:`TrialSeededSampler` gives each trial its own sampler, seeded by
``(seed, trial number)`` and asked with the study's history: with one trial at a time the values
of trial ``n`` are the same whether or not the sweep was interrupted before it (the history of
completed trials is the same, rebuilt from the store), and a resumed sweep stores the same
trials as an uninterrupted one. With several trials at a time the history a trial is asked with
depends on timing anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class TrialSeededSampler(BaseSampler):
    """Trial ``n`` is sampled by a fresh ``kind`` sampler (``tpe`` | ``random``) seeded from
    ``(seed, n)``. Plain attributes only: Ray Tune pickles its searcher's state."""

    def __init__(self, kind: str, seed: int, n_startup_trials: int = 4):
        self.kind = kind
        self.seed = int(seed)
        self.n_startup_trials = int(n_startup_trials)
        self._inner: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        number = int(trial.number)
        if number not in self._inner:
            seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
            self._inner[number] = (
                optuna.samplers.RandomSampler(seed=seed) if self.kind == "random" else
                optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials))
        return self._inner[number]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._inner.pop(int(trial.number), None)

    def reseed_rng(self) -> None:  # the seeds are the point: nothing to reseed
        pass


def make_sampler(searcher: dict[str, Any]) -> TrialSeededSampler:
    """The sampler of a search space's ``searcher`` section (``type`` tpe | random, ``seed``,
    ``n_startup_trials``), seeded per trial."""
    return TrialSeededSampler("random" if searcher.get("type") == "random" else "tpe",
                              int(searcher.get("seed", 0)),
                              int(searcher.get("n_startup_trials", 4)))
