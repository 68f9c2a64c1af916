"""Dataset loaders and features.

- images: scikit-learn digits, the shared MNIST subset, SVHN (through ``torchvision.datasets.SVHN``), PNG
  crops, semi-supervised splits; ``MemmapImages`` / ``svhn_dataset`` stream uint8 images from a ``.npy``
  memory map (SVHN ``extra``) as a map-style ``torch.utils.data.Dataset`` of float32 batches
- synthetic: the generated-dataset file format, weighted datasets and real + synthetic mixing
- speech / stft: speech corpora and the STFT features; genlib keeps its own VCTK / LibriSpeech loaders (read
  with soundfile) because torchaudio's datasets decode through TorchCodec, which torchaudio 2.9+ needs and
  this stack does not install; ``SpeechFrameCache`` keeps the STFT frames of a corpus in a complex64 ``.npy``
  on disk (built utterance by utterance, reused while the sources and settings match) instead of memory

The speech half (:mod:`genlib.data.speech`, :mod:`genlib.data.stft`) needs torchaudio and soundfile; it is
imported on first use of one of its names, so ``import genlib.data`` (and everything that only needs images)
does not load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genlib._lazy import lazy_attributes
from genlib.data import images, synthetic
from genlib.data.images import (
    ConcatImages,
    MemmapImages,
    SemiSupervisedData,
    SplitIndices,
    default_data_root,
    load_digits_sklearn,
    load_image_folder_crops,
    load_mnist_npz,
    load_svhn,
    load_svhn_semi_supervised,
    semi_supervised_split,
    svhn_dataset,
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
        SpeechFrameCache,
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
         "split_by_speaker", "SpeechFrames", "SpeechFrameCache", "SpeechWindows"],
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
    "svhn_dataset",
    "MemmapImages",
    "ConcatImages",
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
    "SpeechFrameCache",
    "SpeechWindows",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
