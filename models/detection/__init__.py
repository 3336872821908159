"""Lesion detection families: MONAI RetinaNet (``retinanet``) and DetSeg3D detect-then-segment (``detseg3d``).

Each family module registers its entries on import; adding one adds an import line below.
"""
