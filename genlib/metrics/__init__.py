"""Speech quality metrics (PESQ, STOI/ESTOI, LSD, spectral convergence), Fréchet Audio Distance, and
image sample-quality metrics judged by a reference classifier (:mod:`genlib.metrics.images`)."""

from typing import Any

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
from genlib.metrics.speech import (
    PESQ_MAX,
    UndefinedMetricWarning,
    lsd,
    pesq,
    pesq_batch,
    spectral_convergence,
    stoi,
)

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
]

# The image metrics load on first access (PEP 562), so they add nothing to ``import genlib.metrics``.
_LAZY = {
    name: "genlib.metrics.images"
    for name in (
        "ReferenceClassifier",
        "train_reference_classifier",
        "label_agreement",
        "feature_frechet_distance",
        "SampleQuality",
        "sample_quality",
    )
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
