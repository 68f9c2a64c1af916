"""Dataset loaders and features.

- images: scikit-learn digits, the shared MNIST subset, SVHN ``.mat`` files, PNG crops, semi-supervised splits
- synthetic: the generated-dataset file format, weighted datasets and real + synthetic mixing
- speech / stft: speech corpora and the STFT features
"""

# Speech (VCTK / LibriSpeech) and the paper's STFT; STFT functions live in genlib.data.stft
# (stft, istft, log_power, phase, griffin_lim, reconstruct) -- the module keeps the name ``stft``.
from genlib.data import images, speech, stft, synthetic
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
from genlib.data.synthetic import (
    SyntheticDataset,
    WeightedConcatDataset,
    WeightedTensorDataset,
    combine_real_and_synthetic,
    load_synthetic_dataset,
    save_synthetic_dataset,
)

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
