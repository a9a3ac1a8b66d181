"""``zeroseg run``: the stages of an experiment (dataset, embeddings, segmenter, feature cache,
method, inference, evaluation, results store), each reused when its inputs are unchanged.

- :mod:`.config`: the typed experiment config (:class:`PipelineConfig`);
- :mod:`.stages`: :class:`Pipeline`, the memoised, hash-addressed stages;
- :mod:`.runner`: one method x seed (:func:`run_one`), a whole config (:func:`run_pipeline`);
- :mod:`.report`: seen / unseen / HM tables (mean +- std over seeds).
"""

from zeroseg.platform.pipeline.config import (
    EVAL_SPLIT,
    PROTOCOLS,
    PipelineConfig,
    load_pipeline_config,
    pipeline_config_from_dict,
    run_config_hash,
    run_identity,
)
from zeroseg.platform.pipeline.stages import Pipeline

__all__ = [
    "EVAL_SPLIT",
    "PROTOCOLS",
    "Pipeline",
    "PipelineConfig",
    "load_pipeline_config",
    "pipeline_config_from_dict",
    "run_config_hash",
    "run_identity",
]
