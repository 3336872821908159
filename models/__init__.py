"""volbench model registry: ``create_model``, ``list_models``, ``model_info``.

Importing this package registers every family; adding a family adds one import line below.
"""

from ._registry import (
    MODALITY_ORDER,
    ModelInfo,
    create_model,
    default_out_channels,
    list_models,
    model_info,
    register_model,
    resolve_model_names,
    set_default_outputs,
)
from . import unet3d  # noqa: F401  (registers unet3d_*, unet3d_stride_*)
from . import monai_transformers  # noqa: F401  (registers unetr, swin_unetr)
from . import dualbranch_basic  # noqa: F401  (dualbranch_01/02/03_unet_*)
from . import dualbranch_replk  # noqa: F401  (dualbranch_04..07_unet_*)
from . import dualbranch_mvit  # noqa: F401  (dualbranch_13_unet_*)
from . import dualbranch_14  # noqa: F401  (dualbranch_14_<backbone>_*)
from . import dualbranch_mobile  # noqa: F401  (dualbranch_mobilenetv2_dilated[_fixed]_*)
from . import modality_comparison  # noqa: F401  (unet3d_2/4modal_s, dualbranch_2modal, quadbranch_*; after dualbranch_basic)
from . import mobile_unetr  # noqa: F401  (mobile_unetr, mobile_unetr_3d)
from . import unet2d_luna  # noqa: F401  (unet2d_luna: the LUNA chapter's 2.5D U-Net)
from . import detection  # noqa: F401  (retinanet, detseg3d)
from . import sam_med3d  # noqa: F401  (sam_med3d: promptable, SAM-Med3D vit_b_ori from medim's classes)
from . import vista3d  # noqa: F401  (vista3d: promptable, MONAI vista3d132)
from . import baselines_nnunet  # noqa: F401  (resenc_unet, dynunet: nnU-Net's planned U-Nets)
from . import baselines_monai  # noqa: F401  (segresnet, mednext_*, basicunet)

__all__ = ["MODALITY_ORDER", "ModelInfo", "create_model", "default_out_channels", "list_models", "model_info",
           "register_model", "resolve_model_names", "set_default_outputs"]
