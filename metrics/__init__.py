"""volbench metrics: overlap (Dice, precision, recall, confusion), surface (HD95), per-case aggregation.

Importing this package loads numpy only; HD95 uses scipy (its exact, cropped distance code matches MONAI's values).
``metrics.efficiency`` (params, FLOPs, memory, latency) is imported on its own.
"""

from .overlap import confusion_matrix, dice, precision_recall
from .regions import BRATS_CLASSES, BRATS_REGIONS, BRATS_SPEC, MetricSpec, binary_spec, region_mask
from .segmentation import SegmentationMetricAccumulator, case_metrics
from .surface import EMPTY_MASK_RULES, hd95, worst_case_distance

__all__ = [
    "BRATS_CLASSES", "BRATS_REGIONS", "BRATS_SPEC", "EMPTY_MASK_RULES", "MetricSpec",
    "SegmentationMetricAccumulator", "binary_spec", "case_metrics", "confusion_matrix", "dice", "hd95",
    "precision_recall", "region_mask", "worst_case_distance",
]
