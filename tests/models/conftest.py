"""Small real-data batches for the model tests, read from ../shared/data (never copied into the repo)."""

import numpy as np
import pytest
import torch

from tests._paths import SHARED_DATA as DATA


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    """256 real MNIST digits, (256, 1, 28, 28) in [0, 1]."""
    path = DATA / "digits" / "mnist_4k.npz"
    if not path.is_file():
        pytest.skip(f"real MNIST subset not found at {path}")
    images = np.load(path)["images"][::16][:256]  # every class: the file is ordered by class
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


@pytest.fixture(scope="session")
def stft_frames() -> torch.Tensor:
    """Complex STFT of two real VCTK utterances (Hann 1024, hop 128), (513, T) concatenated along time."""
    import soundfile as sf

    files = sorted((DATA / "speech" / "vctk16k").glob("p22[56]/*.wav"))
    if len(files) < 2:
        pytest.skip(f"VCTK wavs not found under {DATA / 'speech' / 'vctk16k'}")
    specs = []
    for f in (files[0], files[-1]):
        wav, _ = sf.read(f, dtype="float32")
        window = torch.hann_window(1024)
        specs.append(torch.stft(torch.from_numpy(wav), 1024, 128, window=window, return_complex=True))
    return torch.cat(specs, dim=1)
