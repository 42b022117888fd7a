"""S3Diff: degradation-guided one-step super-resolution (arXiv 2409.17058) as a restorer g.

``load_restorer("s3diff", weights=..., de_net=..., base_model=...)`` returns an
:class:`S3DiffRestorer`. The modules:

* :mod:`.degradation_estimator`: the DEResNet that scores blur and noise of the LQ image;
* :mod:`.modulation`: the score → per-block LoRA modulation network and the peft hooks applying it;
* :mod:`.restorer`: checkpoint loading onto the shared one-step engine and the official inference.
"""

from . import restorer
from .degradation_estimator import DegradationEstimator
from .modulation import DegradationModulation, DegradationModulator, LoRAModulation
# The restorer's __all__: S3DiffRestorer and the official defaults.
from .restorer import *  # noqa: F401, F403

__all__ = [
    *restorer.__all__,
    "DegradationEstimator",
    "DegradationModulator",
    "DegradationModulation",
    "LoRAModulation",
]
