"""patchlab: memory-efficient patch-based diffusion models (Arakawa et al., CVPR 2023 workshop).

Main entry points::

    cfg = patchlab.config.from_params(image_size=32, patches=2, ...)
    model, schedule = patchlab.build(cfg)
    patchlab.training.train(cfg, "runs/demo")
    images = patchlab.sampling.sample(model, schedule, 16, sampler="ddim", steps=50)
"""

from . import (checkpoint, config, data, memory, metrics, model, patches, runs, runtime, sampling,  # noqa: F401
               schedule, training, viz)
from .model import build  # noqa: F401
from .runs import load_run  # noqa: F401

__version__ = "0.1.0"
