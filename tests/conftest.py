"""Suite-wide setup: every test process loads the task registry.

``models.create_model`` takes a model's default ``out_channels`` from the task registry, which ``engine.tasks``
fills when imported (BraTS's 4 labels for segmentation models, one class for the lesion detectors); tests that
build registry models at their default size (parameter counts, the model zoo) need it even when they import no
engine module themselves. Under pytest-xdist, every worker runs torch on one thread (below).
"""

import os

# Under pytest-xdist each worker runs torch on one thread (unless OMP_NUM_THREADS says otherwise): two workers with
# torch's default of one thread per core oversubscribe the cores, and a spinning OpenMP team slowed single tests up to
# 8x (one lesion-learning sweep: 42 s alone, 363 s beside the other worker). Set before torch loads; subprocesses
# started by tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import engine.tasks  # noqa: E402,F401

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ["OMP_NUM_THREADS"] == "1":
    torch.set_num_threads(1)  # in case a plugin imported torch before this file
