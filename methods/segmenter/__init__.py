"""The segmenter: Mask2Former mask proposals with per-query class embeddings, its training data,
checkpoints and the three-task inference (semantic / instance / panoptic).

Heavy imports (transformers) happen when a model is built, not when this package is imported.
"""

from zeroseg.methods.segmenter.checkpoint import (
    checkpoint_fingerprint,
    load_segmenter,
    save_segmenter,
)
from zeroseg.methods.segmenter.data import SegmentationDataset, collate_segmentation
from zeroseg.methods.segmenter.inference import (
    TASKS,
    Classifier,
    InferenceConfig,
    instance_inference,
    panoptic_inference,
    predict_dataset,
    segmenter_classifier,
    semantic_inference,
)
from zeroseg.methods.segmenter.model import (
    SIZES,
    Segmenter,
    SegmenterConfig,
    SegmenterOutput,
)

__all__ = [
    "SIZES",
    "TASKS",
    "Classifier",
    "InferenceConfig",
    "SegmentationDataset",
    "Segmenter",
    "SegmenterConfig",
    "SegmenterOutput",
    "checkpoint_fingerprint",
    "collate_segmentation",
    "instance_inference",
    "load_segmenter",
    "panoptic_inference",
    "predict_dataset",
    "save_segmenter",
    "segmenter_classifier",
    "semantic_inference",
]
