"""SpeechFrameCache: the frames of SpeechFrames on disk (complex64 .npy memory map), built utterance by
utterance from the shared VCTK files, reused while the sources and settings match, rebuilt otherwise."""

import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from genlib.data import SpeechFrameCache, SpeechFrames, discover_vctk
from genlib.train import StepBatches
from tests._paths import SHARED_DATA

VCTK = SHARED_DATA / "speech" / "vctk16k"
pytestmark = pytest.mark.skipif(not VCTK.is_dir(), reason=f"shared VCTK folder missing: {VCTK}")


@pytest.fixture(scope="module")
def utts():
    return [u for u in discover_vctk(VCTK) if u.speaker in ("p225", "p226")][:6]


def test_cache_equals_speech_frames_and_is_reused(utts, tmp_path, monkeypatch):
    ref = SpeechFrames(utts, every=10)
    cache = SpeechFrameCache(utts, tmp_path / "frames", every=10)
    assert cache.status == "built" and len(cache) == len(ref)
    frames = np.load(tmp_path / "frames" / "frames.npy", mmap_mode="r")
    assert frames.dtype == np.complex64 and frames.shape == tuple(ref.data.shape)
    assert torch.equal(cache.__getitems__(range(len(cache))), ref.data)
    assert torch.equal(cache.utterance_index, ref.utterance_index)
    idx = [5, 0, len(ref) - 1, 5, -2]
    assert torch.equal(cache.__getitems__(idx), ref.data[idx]) and torch.equal(cache[7], ref.data[7])
    # second open: no audio is read (decoding would fail), the same frames come back
    import genlib.data.speech as speech

    def no_audio(*a, **k):
        raise AssertionError("a reused cache must not read audio")

    monkeypatch.setattr(speech, "load_audio", no_audio)
    again = SpeechFrameCache(utts, tmp_path / "frames", every=10)
    assert again.status == "reused" and torch.equal(again.__getitems__(range(len(again))), ref.data)
    # workers get the path, not the frames; StepBatches reads it as it reads the tensor
    blob = pickle.dumps(again)
    assert len(blob) < 10_000 and torch.equal(pickle.loads(blob)[3], ref.data[3])
    a, b = StepBatches({"f": again}, 32, seed=1, order="epochs"), StepBatches({"f": ref.data}, 32, seed=1,
                                                                              order="epochs")
    for step in range(4):
        assert torch.equal(a[step]["f"], b[step]["f"])


def test_other_sources_or_settings_rebuild_the_cache(utts, tmp_path):
    folder = tmp_path / "frames"
    SpeechFrameCache(utts[:3], folder, every=10)
    other = SpeechFrameCache(utts[:3], folder, every=4)  # other settings
    assert other.status == "rebuilt"
    assert torch.equal(other.__getitems__(range(len(other))), SpeechFrames(utts[:3], every=4).data)
    fewer = SpeechFrameCache(utts[:2], folder, every=4)  # other sources
    assert fewer.status == "rebuilt" and len(fewer) == len(SpeechFrames(utts[:2], every=4))
    assert SpeechFrameCache(utts[:2], folder, every=4).status == "reused"
    # a source file that changed (size / mtime) makes the cache stale
    copy = tmp_path / "p225_copy.wav"
    wave, sr = sf.read(utts[0].path)
    sf.write(copy, wave, sr)
    SpeechFrameCache([copy], folder)
    sf.write(copy, wave[: len(wave) // 2], sr)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stale = SpeechFrameCache([copy], folder)
    assert stale.status == "rebuilt" and torch.equal(stale.__getitems__(range(len(stale))),
                                                     SpeechFrames([copy]).data)
    # waveforms (tensors) are fingerprinted by their samples
    w = torch.randn(8000)
    assert SpeechFrameCache([w], folder).status == "rebuilt"
    assert SpeechFrameCache([w.clone()], folder).status == "reused"
    assert SpeechFrameCache([w + 1e-3], folder).status == "rebuilt"


def test_half_written_or_damaged_cache_is_never_reused(utts, tmp_path):
    folder = tmp_path / "frames"
    SpeechFrameCache(utts[:2], folder)
    ref = SpeechFrames(utts[:2]).data
    frames = folder / "frames.npy"
    frames.write_bytes(frames.read_bytes()[: 1000])  # truncated: the shape no longer matches the record
    c = SpeechFrameCache(utts[:2], folder)
    assert c.status == "rebuilt" and torch.equal(c.__getitems__(range(len(c))), ref)
    (folder / "cache.json").unlink()  # a crash before the record: frames without a key
    assert SpeechFrameCache(utts[:2], folder).status == "rebuilt"
    meta = json.loads((folder / "cache.json").read_text())
    assert meta["n_frames"] == len(ref) and sum(meta["counts"]) == len(ref)
    assert not [p for p in folder.iterdir() if p.name not in ("frames.npy", "cache.json")]  # no temp files


def test_bad_arguments(utts, tmp_path):
    with pytest.raises(ValueError, match="every must be"):
        SpeechFrameCache(utts, tmp_path / "f", every=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        SpeechFrameCache([], tmp_path / "f")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        SpeechFrameCache(utts, tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        SpeechFrameCache([tmp_path / "missing.wav"], tmp_path / "f")
