"""Speech quality metrics (PESQ, STOI/ESTOI, LSD, spectral convergence), Fréchet Audio Distance, and
image sample-quality metrics judged by a reference classifier (:mod:`genlib.metrics.images`)."""

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
    "ReferenceClassifier",
    "train_reference_classifier",
    "label_agreement",
    "feature_frechet_distance",
    "SampleQuality",
    "sample_quality",
]
