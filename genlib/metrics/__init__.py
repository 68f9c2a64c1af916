"""Speech quality metrics (PESQ, STOI/ESTOI, LSD, spectral convergence), Fréchet Audio Distance, and
image sample-quality metrics judged by a reference classifier (:mod:`genlib.metrics.images`).

The speech metrics (pesq, pystoi and scipy.signal: most of a second) are imported on first use of one of
their names (PEP 562), so ``import genlib.metrics`` and the image metrics do not load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genlib._lazy import lazy_attributes
from genlib.metrics.fad import (
    Embedding,
    ResemblyzerEmbedding,
    VGGish,
    VGGishEmbedding,
    embed_waves,
    fad,
    fad_from_audio,
    frechet_distance,
    gaussian_fit,
    vggish_examples,
)
from genlib.metrics.images import (
    ReferenceClassifier,
    SampleQuality,
    feature_frechet_distance,
    label_agreement,
    sample_quality,
    train_reference_classifier,
)

if TYPE_CHECKING:
    from genlib.metrics.speech import (
        PESQ_MAX,
        UndefinedMetricWarning,
        lsd,
        pesq,
        pesq_batch,
        spectral_convergence,
        stoi,
    )

# name -> module that defines it; loaded by __getattr__ on first access.
_LAZY: dict[str, str] = {
    "speech": "genlib.metrics.speech",
    **dict.fromkeys(
        ["PESQ_MAX", "UndefinedMetricWarning", "pesq", "pesq_batch", "stoi", "lsd", "spectral_convergence"],
        "genlib.metrics.speech",
    ),
}

__all__ = [
    "PESQ_MAX",
    "UndefinedMetricWarning",
    "pesq",
    "pesq_batch",
    "stoi",
    "lsd",
    "spectral_convergence",
    "frechet_distance",
    "gaussian_fit",
    "fad",
    "Embedding",
    "embed_waves",
    "fad_from_audio",
    "ResemblyzerEmbedding",
    "VGGish",
    "VGGishEmbedding",
    "vggish_examples",
    "ReferenceClassifier",
    "train_reference_classifier",
    "label_agreement",
    "feature_frechet_distance",
    "SampleQuality",
    "sample_quality",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
