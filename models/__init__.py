"""volbench model registry: ``create_model``, ``list_models``, ``model_info``.

Importing this package registers every family; adding a family adds one import line below.
"""

from ._registry import (
    MODALITY_ORDER,
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
    resolve_model_names,
)
from . import unet3d  # noqa: F401  (registers unet3d_*, unet3d_stride_*)
from . import monai_transformers  # noqa: F401  (registers unetr, swin_unetr)

__all__ = ["MODALITY_ORDER", "ModelInfo", "create_model", "list_models", "model_info", "register_model",
           "resolve_model_names"]
