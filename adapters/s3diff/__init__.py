"""S3Diff: degradation-guided one-step super-resolution (arXiv 2409.17058) as a restorer g.

``load_restorer("s3diff", weights=..., de_net=..., base_model=...)`` returns an
:class:`S3DiffRestorer`. The modules:

* :mod:`.degradation_estimator`: the DEResNet that scores blur and noise of the LQ image;
* :mod:`.modulation`: the score → per-block LoRA modulation network and the peft hooks applying it;
* :mod:`.restorer`: checkpoint loading onto the shared one-step engine and the official inference.
"""

from .degradation_estimator import DegradationEstimator
from .modulation import DegradationModulation, DegradationModulator, LoRAModulation
from .restorer import (
    DE_NET_URL,
    GUIDANCE_SCALE,
    NEGATIVE_PROMPT,
    POSITIVE_PROMPT,
    S3DIFF_BASE,
    S3DIFF_WEIGHTS,
    S3DiffRestorer,
)

__all__ = [
    "S3DiffRestorer",
    "DegradationEstimator",
    "DegradationModulator",
    "DegradationModulation",
    "LoRAModulation",
    "S3DIFF_BASE",
    "S3DIFF_WEIGHTS",
    "DE_NET_URL",
    "POSITIVE_PROMPT",
    "NEGATIVE_PROMPT",
    "GUIDANCE_SCALE",
]
