"""The experiment config of ``zeroseg run CONFIG`` (YAML in, validated before anything runs).

One file describes a set of runs: every method in ``methods`` with every seed in ``seeds``,
sharing one dataset, one set of class embeddings, one segmenter per protocol and one feature
cache per segmenter. Sections (see ``configs/pading_small.yaml``)::

    name          a label for the runs (default: the file name)
    methods       registry names: supervised, seen-only, projection, gmmn, pading-p, pading-pa,
                  pading (``zeroseg methods`` lists them)
    params        per method name, its knobs (dotted keys allowed), e.g. params.pading.tau
    seeds         seeds of the method stages (the segmenter has its own: segmenter.train.seed)
    data          root, benchmark, synthetic {size, seed}, train_split, eval_split
    embedding     provider + options (platform/embeddings)
    segmenter     model, optim, train, distributed, augment (platform/training's config)
    features      feature-cache extraction knobs (platform/features)
    evaluation    protocols (test, validation), settings (gzsl, zsl), tasks, inference knobs
    work_dir      where artifacts live (datasets, segmenters, caches, runs); default .zeroseg
    store         results store URL or path (default: $ZEROSEG_STORE or WORK_DIR/results.db)

Protocols: ``test`` trains the segmenter on the seen classes and reports the test split's unseen
classes (``eval_split: test`` in the store); ``validation`` trains it without the held-out seen
classes as well and reports those as "unseen" (``eval_split: val`` in the store) -- what sweeps
select hyperparameters on, so the test unseen classes never influence a choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zeroseg.methods.registry import get_method
from zeroseg.methods.segmenter.inference import TASKS as PREDICTED_TASKS
from zeroseg.methods.segmenter.inference import InferenceConfig
from zeroseg.methods.segmenter.model import SegmenterConfig
from zeroseg.platform.config import (
    added_field,
    config_hash,
    from_dict,
    load_yaml,
    set_dotted,
    to_dict,
)
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.evaluation.summary import TASKS as EVALUATION_TASKS
from zeroseg.platform.training.config import (
    DistributedConfig,
    MethodTrainingConfig,
    OptimConfig,
    SyntheticDataConfig,
    TrainLoopConfig,
)

Protocol = Literal["test", "validation"]
PROTOCOLS: tuple[str, ...] = ("test", "validation")
#: The store's ``eval_split`` of each protocol.
EVAL_SPLIT = {"test": "test", "validation": "val"}


@dataclass
class DataSpec:
    root: Path
    benchmark: str | None = None  # registry split; None: the dataset's classes.json
    synthetic: SyntheticDataConfig | None = None  # generate the benchmark into root if missing
    train_split: str = "train"
    eval_split: str = "val"
    # the first N images (ascending id) of training (after the leakage filter) and evaluation
    max_images: int | None = added_field(None, since="issue 12")

    def validate(self) -> None:
        if self.train_split == self.eval_split:
            raise ConfigError(f"data.eval_split must differ from data.train_split "
                              f"({self.train_split!r})")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"data.max_images must be >= 1, got {self.max_images}")
        if self.synthetic is not None and self.benchmark is not None:
            name = self.benchmark.replace("/", "_").replace("-", "_")
            raise ConfigError(f"data.benchmark: this config generates the synthetic benchmark "
                              f"(data.synthetic), which defines its own classes; for "
                              f"{self.benchmark} on real data run configs/{name}.yaml --set "
                              f"data.root=DIR, or add --set data.synthetic=null")


@dataclass
class EmbeddingSpec:
    provider: str = "attributes"
    options: dict[str, Any] = field(default_factory=dict)

    def as_config(self) -> dict[str, Any]:
        return {"provider": self.provider, **self.options}


@dataclass
class SegmenterSpec:
    """The segmenter's training (platform/training/config.py) minus data and output."""

    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    augment: bool = True
    # shortest-edge resize: large-scale jitter's scale range (Mask2Former: [0.1, 2.0])
    scale_range: tuple[float, float] = added_field((1.0, 1.0), since="issue 12")


@dataclass
class FeatureSpec:
    """Feature-cache extraction (platform/features/config.py); none of these change results
    except ``mask_codec`` / ``embed_dtype`` (stored precision)."""

    batch_size: int = 16
    workers: int = 1  # > 1: Ray actors
    threads_per_worker: int = 1
    shard_size: int = 128
    mask_codec: Literal["float32", "float16", "int8"] = "float16"
    embed_dtype: Literal["float32", "float16"] = "float32"
    device: str = "cpu"
    # train_all caches also store each query's mask mass over unlabelled pixels in this many
    # horizontal bands (platform/features/config.py); Cap2Seg's ranking loss needs it. 0: off.
    stripe_bands: int = added_field(0, since="issue 18")


@dataclass
class EvaluationSpec:
    protocols: list[Protocol] = field(default_factory=lambda: ["test"])
    settings: list[Literal["gzsl", "zsl"]] = field(default_factory=lambda: ["gzsl", "zsl"])
    # Scored tasks: the three predicted ones by default; "detection" (ZSD, box IoU on the
    # instance predictions) where asked for.
    tasks: list[str] = field(default_factory=lambda: list(PREDICTED_TASKS))
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    per_class: bool = True  # store one metric row per class as well
    # Prediction files of each run: all (COCO result files of every task), sample (semantic
    # PNGs of a few images with unseen classes, for the dashboard) or none. Scoring is in
    # memory either way and does not depend on it.
    keep_predictions: Literal["all", "sample", "none"] = "sample"
    # Panoptic means over classes absent from both GT and predictions: "zero" counts them as 0
    # (PADing's published averaging), "exclude" leaves them out (panopticapi's pq_compute).
    empty_classes: Literal["zero", "exclude"] = added_field("zero", since="issue 12")

    def validate(self) -> None:
        for name in ("protocols", "settings", "tasks"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"evaluation.{name}: expected at least one entry")
            if len(set(values)) != len(values):
                raise ConfigError(f"evaluation.{name}: duplicate entries in {values}")
        unknown = [t for t in self.tasks if t not in EVALUATION_TASKS]
        if unknown:
            raise ConfigError(f"evaluation.tasks: unknown task {unknown[0]!r}; expected some of "
                              f"{list(EVALUATION_TASKS)}")


@dataclass
class PipelineConfig:
    data: DataSpec
    methods: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str | None = None
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    segmenter: SegmenterSpec = field(default_factory=SegmenterSpec)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    work_dir: Path = Path(".zeroseg")
    store: str | None = None
    threads: int = 1  # torch threads of the method stages (fixed: same config + seed, same numbers)
    # workers > 1: generators train on Ray Train + DeepSpeed (platform/training/generator.py);
    # model methods train on that many Ray Train workers (platform/training/model.py)
    method_training: MethodTrainingConfig = field(default_factory=MethodTrainingConfig)
    # How the method knobs were chosen (recorded in the leakage audit): "fixed config" for a
    # hand-written file; reproductions of a sweep say which sweep and split chose them.
    selected_by: str = "fixed config (not tuned)"
    # A smoke run (``zeroseg run CONFIG --smoke``): every stage at a minute's size; part of the
    # run's identity, so its numbers are never mistaken for (or reused as) the real ones.
    smoke: bool = added_field(False, since="issue 12")

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("methods: expected at least one method name")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods: duplicate entries in {self.methods}")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: expected distinct non-negative integers, got {self.seeds}")
        for name in self.methods:
            get_method(name)  # unknown names fail here, listing the known ones
        for name in sorted(set(self.methods) | set(self.params)):
            get_method(name)  # params of a method not run now must still name a method
            self.method_config(name)  # typos in params fail here, naming the key

    def method_config(self, name: str) -> Any:
        return get_method(name).build_config(self.params.get(name), where=f"params.{name}")


def load_pipeline_config(path: str | Path, overrides: dict[str, Any] | None = None
                         ) -> PipelineConfig:
    """Read and validate ``path``; ``overrides`` are dotted keys (``seeds``, ``params.pading.tau``).
    ``name`` defaults to the file's stem."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    data.setdefault("name", Path(path).stem)
    return from_dict(PipelineConfig, data, where=str(path))


def pipeline_config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    return from_dict(PipelineConfig, data, where=where)


def run_identity(config: PipelineConfig, method: str) -> dict[str, Any]:
    """What one run is, as stored in ``runs.config``: everything that shapes its numbers for
    ``method`` (the seed is stored beside it; work_dir, store and name are not part of it)."""
    doc = to_dict(config)
    for key in ("methods", "params", "seeds", "name", "work_dir", "store", "selected_by",
                "threads"):
        doc.pop(key, None)
    doc["method"] = method
    doc["params"] = to_dict(config.method_config(method))
    return doc


def run_config_hash(config: PipelineConfig, method: str) -> str:
    """Same for every seed of one configuration (seeds group under it)."""
    return config_hash(run_identity(config, method))
