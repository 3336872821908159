"""Lesion detection families: MONAI RetinaNet (``retinanet``) and DetSeg3D detect-then-segment (``detseg3d``).

Each family module registers its entries on import; adding one adds an import line below.
"""
from . import retinanet  # noqa: F401
from . import detseg3d  # noqa: F401
