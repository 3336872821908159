"""Suite-wide setup: every test process loads the task registry.

``models.create_model`` takes a model's default ``out_channels`` from the task registry, which ``engine.tasks``
fills when imported (BraTS's 4 labels for segmentation models, one class for the lesion detectors); tests that
build registry models at their default size (parameter counts, the model zoo) need it even when they import no
engine module themselves.
"""

import engine.tasks  # noqa: F401
