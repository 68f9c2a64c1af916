"""Speech corpora: layout discovery (tiny files in every real layout, and the shared real folders),
resampling, speaker splits and STFT-frame datasets."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from genlib.data import (
    SpeechFrames,
    SpeechWindows,
    discover_librispeech,
    discover_utterances,
    discover_vctk,
    load_audio,
    split_by_speaker,
)
from genlib.data.stft import stft
from tests._paths import SHARED_DATA

DATA = SHARED_DATA
SPEECH = DATA / "speech"
LAYOUT_ERROR = r"(?s)no utterances found under .*empty.*wav48_silence_trimmed.*CHAPTER"


def _write(
    path: Path, sr: int = 48000, seconds: float = 0.05, freq: float = 440.0, channels: int = 1
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr)


def _names(utts):
    return [(u.path.name, u.speaker) for u in utts]


# ---------------------------------------------------------------- layouts written into tmp_path


def test_vctk_092_flac_mic1_default_and_mic2(tmp_path):
    base = tmp_path / "VCTK-Corpus-0.92" / "wav48_silence_trimmed"
    for spk in ("p225", "p226"):
        for n in ("001", "002"):
            for mic in ("mic1", "mic2"):
                _write(base / spk / f"{spk}_{n}_{mic}.flac")
    (base / "log.txt").write_text("not audio")
    mic1 = discover_vctk(tmp_path / "VCTK-Corpus-0.92")
    assert _names(mic1) == [
        ("p225_001_mic1.flac", "p225"),
        ("p225_002_mic1.flac", "p225"),
        ("p226_001_mic1.flac", "p226"),
        ("p226_002_mic1.flac", "p226"),
    ]
    mic2 = discover_utterances(tmp_path / "VCTK-Corpus-0.92", mic="mic2")
    assert [n for n, _ in _names(mic2)] == [n.replace("mic1", "mic2") for n, _ in _names(mic1)]
    assert all(u.corpus == "vctk" for u in mic2)
    # the speaker folders can also be given directly
    assert _names(discover_vctk(base)) == _names(mic1)


def test_vctk_wav48_plain_and_flat(tmp_path):
    _write(tmp_path / "old" / "wav48" / "p225" / "p225_001.wav")
    _write(tmp_path / "old" / "wav48" / "p227" / "p227_004.wav")
    _write(tmp_path / "plain" / "p228" / "p228_010.wav")
    _write(tmp_path / "plain" / "s5" / "s5_001.wav")
    _write(tmp_path / "flat" / "p232_001.wav")
    _write(tmp_path / "flat" / "p257_002.wav")
    assert _names(discover_utterances(tmp_path / "old")) == [
        ("p225_001.wav", "p225"),
        ("p227_004.wav", "p227"),
    ]
    assert _names(discover_utterances(tmp_path / "plain")) == [("p228_010.wav", "p228"), ("s5_001.wav", "s5")]
    assert _names(discover_vctk(tmp_path / "flat")) == [("p232_001.wav", "p232"), ("p257_002.wav", "p257")]


def test_librispeech_nested_and_flat(tmp_path):
    _write(tmp_path / "nested" / "19" / "198" / "19-198-0000.flac", sr=16000)
    _write(tmp_path / "nested" / "19" / "227" / "19-227-0003.flac", sr=16000)
    _write(tmp_path / "nested" / "26" / "495" / "26-495-0001.flac", sr=16000)
    (tmp_path / "nested" / "19" / "198" / "19-198.trans.txt").write_text("19-198-0000 HELLO")
    _write(tmp_path / "flat" / "103-1240-0000.flac", sr=16000)
    _write(tmp_path / "flat" / "1034-121119-0000.flac", sr=16000)
    nested = discover_librispeech(tmp_path / "nested")
    assert _names(nested) == [
        ("19-198-0000.flac", "19"),
        ("19-227-0003.flac", "19"),
        ("26-495-0001.flac", "26"),
    ]
    assert all(u.corpus == "librispeech" for u in nested)
    assert _names(discover_utterances(tmp_path / "flat")) == [
        ("103-1240-0000.flac", "103"),
        ("1034-121119-0000.flac", "1034"),
    ]


def test_missing_and_empty_roots_name_path_and_layouts(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="speech root not found: .*nope"):
        discover_utterances(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=LAYOUT_ERROR):
        discover_utterances(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="mic=mic2"):
        _write(tmp_path / "m1" / "p225" / "p225_001_mic1.flac")
        discover_vctk(tmp_path / "m1", mic="mic2")
    with pytest.raises(ValueError, match="mic must be"):
        discover_vctk(tmp_path, mic="mic3")
    with pytest.raises(ValueError, match="corpus must be"):
        discover_utterances(tmp_path, corpus="timit")
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "x.wav")


# ---------------------------------------------------------------- the shared real folders


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real speech data not found at {path}")
    return path


def test_real_vctk_and_voicebank():
    utts = discover_utterances(_need(SPEECH / "vctk16k"))
    assert len(utts) == 40
    assert sorted({u.speaker for u in utts}) == ["p225", "p226", "p227", "p228"]
    assert all(u.path.parent.name == u.speaker for u in utts)
    clean = discover_vctk(_need(SPEECH / "vctk16k_noisy_pairs" / "clean"))
    assert [u.speaker for u in clean] == ["p287"] * 6


def test_real_librispeech():
    other = discover_utterances(_need(SPEECH / "librispeech" / "librispeech_test-other"))
    assert len(other) == 100 and len({u.speaker for u in other}) == 10
    assert all(u.path.parent.name == u.speaker for u in other)  # SPK/ folders agree with the file names
    train = discover_librispeech(_need(SPEECH / "librispeech" / "librispeech_train-clean-100"))
    assert len(train) == 251 and len({u.speaker for u in train}) == 251


# ---------------------------------------------------------------- audio reading


def test_resample_48k_to_16k_keeps_a_sines_frequency(tmp_path):
    _write(tmp_path / "sine.flac", sr=48000, seconds=1.0, freq=1234.0, channels=2)
    wave = load_audio(tmp_path / "sine.flac")
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    peak_hz = spectrum.argmax() * 16000 / len(wave)
    assert abs(peak_hz - 1234.0) <= 1.0
    assert abs(np.abs(wave.numpy()[1000:-1000]).max() - 0.5) < 0.01  # amplitude kept, stereo averaged


def test_load_real_16k_file_unchanged():
    path = _need(SPEECH / "vctk16k") / "p225" / "p225_003.wav"
    ref, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    assert np.array_equal(load_audio(path).numpy(), ref)


# ---------------------------------------------------------------- speaker splits


def _fake_utts(tmp_path, n_speakers=20, per=3):
    for s in range(n_speakers):
        for i in range(per):
            _write(tmp_path / f"p{300 + s}" / f"p{300 + s}_{i:03d}.wav", sr=16000, seconds=0.02)
    return discover_vctk(tmp_path)


def test_split_by_fraction_is_disjoint_and_seeded(tmp_path):
    utts = _fake_utts(tmp_path)
    split = split_by_speaker(utts, train=0.1, val=0.1, test=0.2, seed=1)
    spk = {k: {u.speaker for u in v} for k, v in split.items()}
    assert [len(spk[k]) for k in ("train", "val", "test")] == [2, 2, 4]  # 10% of 20 speakers trains
    assert not (spk["train"] & spk["val"] or spk["train"] & spk["test"] or spk["val"] & spk["test"])
    assert all(len(v) == 3 * len(spk[k]) for k, v in split.items())  # every utterance of a chosen speaker
    assert split == split_by_speaker(utts, train=0.1, val=0.1, test=0.2, seed=1)
    other = split_by_speaker(utts, train=0.1, val=0.1, test=0.2, seed=2)
    assert {u.speaker for u in other["test"]} != spk["test"]
    # each non-zero fraction gets at least one speaker
    assert len({u.speaker for u in split_by_speaker(utts, 0.01, 0.0, 0.0)["train"]}) == 1


def test_split_by_explicit_lists(tmp_path):
    utts = _fake_utts(tmp_path, n_speakers=4)
    split = split_by_speaker(utts, speakers={"train": ["p300", "p302"], "test": ["p303"]})
    assert [u.speaker for u in split["train"]] == ["p300"] * 3 + ["p302"] * 3
    assert split["val"] == [] and {u.speaker for u in split["test"]} == {"p303"}
    with pytest.raises(ValueError, match="disjoint"):
        split_by_speaker(utts, speakers={"train": ["p300"], "val": ["p300"]})
    with pytest.raises(ValueError, match="no utterances: \\['p999'\\]"):
        split_by_speaker(utts, speakers={"train": ["p999"]})
    with pytest.raises(ValueError, match="<= 1"):
        split_by_speaker(utts, train=0.8, val=0.2, test=0.2)
    with pytest.raises(ValueError, match="at least one speaker"):
        split_by_speaker(utts[:3], train=0.5, val=0.3, test=0.2)
    with pytest.raises(ValueError, match="non-empty"):
        split_by_speaker([])


# ---------------------------------------------------------------- frame datasets


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    utts = discover_vctk(_need(SPEECH / "vctk16k"))
    return [load_audio(u.path)[: 16000 + 3000 * i] for i, u in enumerate(utts[:3])]


def test_every_kth_frame(waves):
    ds = SpeechFrames(waves, every=10)
    specs = [stft(w) for w in waves]
    assert len(ds) == sum(-(-s.shape[1] // 10) for s in specs) and ds.data.dtype == torch.complex64
    first = int((ds.utterance_index == 0).sum())
    assert torch.equal(ds[1], specs[0][:, 10])
    assert torch.equal(ds[first], specs[1][:, 0])
    assert torch.equal(SpeechFrames(waves, every=1).data, torch.cat([s.T for s in specs]))


def test_frames_from_utterances_match_waves(waves):
    utts = discover_vctk(_need(SPEECH / "vctk16k"))[:1]
    assert torch.equal(SpeechFrames(utts).data, SpeechFrames([load_audio(utts[0].path)]).data)


def test_random_windows_are_seeded_slices(waves):
    ds = SpeechWindows(waves, n_windows=12, frames=32, seed=5)
    assert ds.data.shape == (12, 513, 32)
    specs = [stft(w) for w in waves]
    for i in range(12):
        u, s = int(ds.utterance_index[i]), int(ds.start_frame[i])
        assert s + 32 <= specs[u].shape[1]
        assert torch.equal(ds[i], specs[u][:, s : s + 32])
    assert torch.equal(SpeechWindows(waves, 12, 32, seed=5).data, ds.data)
    assert not torch.equal(SpeechWindows(waves, 12, 32, seed=6).data, ds.data)
    assert len(set(ds.utterance_index.tolist())) > 1


def test_dataset_bad_input(waves):
    with pytest.raises(ValueError, match="longer than every utterance"):
        SpeechWindows(waves, n_windows=2, frames=10_000)
    with pytest.raises(ValueError, match="every must be"):
        SpeechFrames(waves, every=0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        SpeechFrames([])
    with pytest.raises(ValueError, match="real 1-D waveform"):
        SpeechFrames([torch.zeros(2, 4000)])


# ---------------------------------------------------------------- corrupt and odd files


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_wav_names_the_file_and_the_frame_counts(tmp_path):
    path = tmp_path / "p225" / "p225_001.wav"
    _write(path, sr=16000, seconds=1.0)
    _truncate(path, 1 / 3)
    with pytest.raises(ValueError, match=r"(?s)p225_001\.wav.*truncated.*16000 frames.*only \d+ could"):
        load_audio(path)


def test_truncated_flac_names_the_file(tmp_path):
    path = tmp_path / "19-198-0000.flac"
    _write(path, sr=16000, seconds=1.0)
    _truncate(path, 1 / 2)
    with pytest.raises(ValueError, match=r"19-198-0000\.flac"):
        load_audio(path)


def test_intact_multichunk_wav_is_not_flagged(tmp_path):
    # A LIST chunk before 'data' and a 24-bit stereo body: the header walk must find the right chunk.
    path = tmp_path / "x.wav"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 2))
    sf.write(path, x, 16000, subtype="PCM_24")
    with sf.SoundFile(path, "r+") as f:
        f.title = "a title that adds a LIST chunk"
    assert load_audio(path).shape == (8000,)


def test_zero_sample_file_in_a_corpus_is_named_before_the_stft(tmp_path):
    good = tmp_path / "p225" / "p225_001.wav"
    empty = tmp_path / "p225" / "p225_002.wav"
    _write(good, sr=16000, seconds=0.5)
    sf.write(empty, np.zeros(0), 16000)
    utts = discover_vctk(tmp_path)
    for build in (lambda: SpeechFrames(utts), lambda: SpeechWindows(utts, n_windows=2, frames=4)):
        with pytest.raises(ValueError, match=r"sources\[1\] \(.*p225_002\.wav\) has no samples"):
            build()
    with pytest.raises(ValueError, match=r"sources\[0\] has only 100 samples"):
        SpeechFrames([torch.zeros(100)])


def test_flat_folder_with_free_names_and_the_ljspeech_layout(tmp_path):
    from genlib.data.speech import discover_flat, sample_rates

    # LJSpeech-1.1: 22.05 kHz wavs under wavs/, free names, a metadata.csv beside them
    lj = tmp_path / "LJSpeech-1.1"
    for name in ("LJ001-0002.wav", "LJ001-0001.wav"):
        _write(lj / "wavs" / name, sr=22050, seconds=0.2)
    (lj / "metadata.csv").write_text("LJ001-0001|Printing|Printing\n")
    utts = discover_utterances(lj)  # auto: neither VCTK nor LibriSpeech names, so the flat layout
    assert _names(utts) == [("LJ001-0001.wav", "LJSpeech-1.1"), ("LJ001-0002.wav", "LJSpeech-1.1")]
    assert {u.corpus for u in utts} == {"flat"} and discover_flat(lj) == utts
    assert sample_rates(utts) == {22050: 2}
    # resampled on load: 0.2 s at 22.05 kHz is 3200 samples at 16 kHz
    assert load_audio(utts[0].path).shape == (3200,)
    # a folder of my own recordings: wav and flac, 48 kHz and 16 kHz, any names, non-audio ignored
    mine = tmp_path / "my recordings"
    _write(mine / "hello world.wav", sr=48000)
    _write(mine / "take_2.flac", sr=16000)
    (mine / "notes.txt").write_text("x")
    utts = discover_utterances(mine, corpus="flat")
    assert _names(utts) == [("hello world.wav", "my recordings"), ("take_2.flac", "my recordings")]
    assert sample_rates([u.path for u in utts]) == {16000: 1, 48000: 1}
    # VCTK-named files in one folder stay VCTK (speakers from the names) under auto discovery
    _write(tmp_path / "vb" / "p232_001.wav")
    assert _names(discover_utterances(tmp_path / "vb")) == [("p232_001.wav", "p232")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"(?s)no utterances found under .*empty.*LJSpeech"):
        discover_utterances(tmp_path / "empty", corpus="flat")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    with pytest.raises(ValueError, match="cannot read the audio header of .*bad.wav"):
        sample_rates([tmp_path / "bad.wav"])
