"""Dataset loaders and features.

- images: scikit-learn digits, the shared MNIST subset, SVHN (through ``torchvision.datasets.SVHN``), PNG
  crops, semi-supervised splits
- synthetic: the generated-dataset file format, weighted datasets and real + synthetic mixing
- speech / stft: speech corpora and the STFT features; genlib keeps its own VCTK / LibriSpeech loaders (read
  with soundfile) because torchaudio's datasets decode through TorchCodec, which torchaudio 2.9+ needs and
  this stack does not install

The speech half (:mod:`genlib.data.speech`, :mod:`genlib.data.stft`) needs torchaudio and soundfile; it is
imported on first use of one of its names, so ``import genlib.data`` (and everything that only needs images)
does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlib.data import images, synthetic
from genlib.data.images import (
    SemiSupervisedData,
    SplitIndices,
    default_data_root,
    load_digits_sklearn,
    load_image_folder_crops,
    load_mnist_npz,
    load_svhn,
    load_svhn_semi_supervised,
    semi_supervised_split,
)
from genlib.data.synthetic import (
    SyntheticDataset,
    WeightedConcatDataset,
    WeightedTensorDataset,
    combine_real_and_synthetic,
    load_synthetic_dataset,
    save_synthetic_dataset,
)

if TYPE_CHECKING:
    # STFT functions live in genlib.data.stft (stft, istft, log_power, phase, griffin_lim, reconstruct).
    from genlib.data import speech, stft
    from genlib.data.speech import (
        SpeechFrames,
        SpeechWindows,
        Utterance,
        discover_librispeech,
        discover_utterances,
        discover_vctk,
        load_audio,
        split_by_speaker,
    )

# name -> module that defines it; loaded by __getattr__ on first access.
_LAZY = {
    "speech": "genlib.data.speech",
    "stft": "genlib.data.stft",
    **dict.fromkeys(
        ["Utterance", "discover_vctk", "discover_librispeech", "discover_utterances", "load_audio",
         "split_by_speaker", "SpeechFrames", "SpeechWindows"],
        "genlib.data.speech",
    ),
}

__all__ = [
    "images",
    "synthetic",
    "default_data_root",
    "load_digits_sklearn",
    "load_mnist_npz",
    "load_svhn",
    "load_image_folder_crops",
    "SplitIndices",
    "semi_supervised_split",
    "SemiSupervisedData",
    "load_svhn_semi_supervised",
    "save_synthetic_dataset",
    "load_synthetic_dataset",
    "WeightedTensorDataset",
    "SyntheticDataset",
    "WeightedConcatDataset",
    "combine_real_and_synthetic",
    "speech",
    "stft",
    "Utterance",
    "discover_vctk",
    "discover_librispeech",
    "discover_utterances",
    "load_audio",
    "split_by_speaker",
    "SpeechFrames",
    "SpeechWindows",
]


def __getattr__(name: str) -> Any:
    """Import the speech half on first use (PEP 562)."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
