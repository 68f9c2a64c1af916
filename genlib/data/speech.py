"""Speech corpora (VCTK, LibriSpeech, flat folders): utterance discovery, speaker splits, STFT-frame datasets.

Layouts understood (``root`` may be the corpus root or the folder holding the speaker folders):

- VCTK 0.92:    ``wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac`` (``mic="mic1"`` by default, or ``"mic2"``)
- VCTK <= 0.91: ``wav48/pXXX/pXXX_NNN.wav``
- plain VCTK:   ``pXXX/*.wav`` or ``pXXX/*.flac`` (e.g. a 16 kHz copy)
- flat VCTK:    ``pXXX_NNN.wav`` files in one folder (Voicebank-DEMAND's ``clean_testset_wav/`` etc.)
- LibriSpeech:  ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac``, ``SPEAKER/*.flac`` or flat ``*.flac``;
  the speaker id is always read from the ``SPK-CHAP-UTT`` file name.
- flat:         ``*.wav`` / ``*.flac`` with any names in one folder, or in its ``wavs/`` subfolder (the
  LJSpeech layout); one speaker, named after the folder given.

Audio is read with soundfile, mixed to mono, resampled with ``torchaudio.functional.resample`` and returned
as float32; :func:`sample_rates` counts the native rates of a list of files (what will be resampled).
Datasets hold complex STFT frames of the paper's STFT (:mod:`genlib.data.stft`): :class:`SpeechFrames` and
:class:`SpeechWindows` in memory, :class:`SpeechFrameCache` (the frames of :class:`SpeechFrames`) in a
complex64 ``.npy`` on disk, computed utterance by utterance and read through a memory map, so a whole corpus
(VCTK's 44 hours: ~2 M frames at ``every=10``, ~8 GB) streams through a ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import Dataset

from genlib.data.images import _checked_indices, _gather_sorted, _random_access
from genlib.data.stft import HOP_LENGTH, N_FFT, SAMPLE_RATE, stft
from genlib.utils import _atomic_write, atomic_write_text

__all__ = [
    "Utterance",
    "discover_vctk",
    "discover_librispeech",
    "discover_flat",
    "discover_utterances",
    "sample_rates",
    "load_audio",
    "split_by_speaker",
    "SpeechFrames",
    "SpeechFrameCache",
    "SpeechWindows",
]

_VCTK_SPEAKER = re.compile(r"^[ps]\d+$")
_VCTK_092 = re.compile(r"^([ps]\d+)_(\d+)_(mic[12])\.flac$")
_VCTK_FLAT = re.compile(r"^([ps]\d+)_(\d+)(?:_mic[12])?\.(?:wav|flac)$")
_LIBRI = re.compile(r"^(\d+)-(\d+)-(\d+)\.flac$")

VCTK_LAYOUTS = (
    "wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac (VCTK 0.92)",
    "wav48/pXXX/*.wav (VCTK <= 0.91)",
    "pXXX/*.wav or pXXX/*.flac (plain)",
    "pXXX_NNN.wav in one folder (flat, Voicebank-DEMAND)",
)
LIBRISPEECH_LAYOUTS = (
    "SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac (LibriSpeech)",
    "SPEAKER/SPEAKER-CHAPTER-UTT.flac",
    "SPEAKER-CHAPTER-UTT.flac in one folder (flat)",
)
FLAT_LAYOUTS = ("*.wav or *.flac with any names in one folder or its wavs/ subfolder (flat, e.g. LJSpeech)",)
CORPORA = ("auto", "vctk", "librispeech", "flat")


@dataclass(frozen=True)
class Utterance:
    """One audio file and its speaker id (``corpus`` is ``"vctk"``, ``"librispeech"`` or ``"flat"``)."""

    path: Path
    speaker: str
    corpus: str


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"speech root not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"speech root must be a directory, got a file: {root}")
    return root


def _no_utterances(root: Path, layouts: Sequence[str], extra: str = "") -> FileNotFoundError:
    looked = "\n  ".join(layouts)
    return FileNotFoundError(f"no utterances found under {root}{extra}; layouts looked for:\n  {looked}")


def _sorted_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def discover_vctk(root: str | os.PathLike, mic: str = "mic1") -> list[Utterance]:
    """All VCTK utterances under ``root`` (any layout in the module docstring), sorted by path.

    ``mic`` selects the microphone of the 0.92 release (``"mic1"`` or ``"mic2"``); it is ignored by the
    older layouts, which have one file per utterance.
    """
    if mic not in ("mic1", "mic2"):
        raise ValueError(f"mic must be 'mic1' or 'mic2', got {mic!r}")
    root = _check_root(root)
    base = root
    for sub in ("wav48_silence_trimmed", "wav48"):
        if (root / sub).is_dir():
            base = root / sub
            break
    utts: list[Utterance] = []
    speaker_dirs = sorted(p for p in base.iterdir() if p.is_dir() and _VCTK_SPEAKER.match(p.name))
    for spk_dir in speaker_dirs:
        for f in _sorted_files(spk_dir, (".flac", ".wav")):
            m = _VCTK_092.match(f.name)
            if m is not None:  # 0.92 naming: keep the requested microphone only
                if m.group(3) == mic:
                    utts.append(Utterance(f, spk_dir.name, "vctk"))
            elif not f.name.endswith(("_mic1.flac", "_mic2.flac")):
                utts.append(Utterance(f, spk_dir.name, "vctk"))
    if not speaker_dirs:  # flat folder: speaker from the file name
        for f in _sorted_files(base, (".flac", ".wav")):
            m = _VCTK_FLAT.match(f.name)
            if m is not None and (not f.name.endswith(("_mic1.flac", "_mic2.flac")) or f"_{mic}." in f.name):
                utts.append(Utterance(f, m.group(1), "vctk"))
    if not utts:
        raise _no_utterances(base, VCTK_LAYOUTS, f" (mic={mic})")
    return utts


def discover_librispeech(root: str | os.PathLike) -> list[Utterance]:
    """All LibriSpeech ``SPK-CHAP-UTT.flac`` files under ``root`` (searched recursively), sorted by path."""
    root = _check_root(root)
    utts = []
    for f in sorted(root.rglob("*.flac")):
        m = _LIBRI.match(f.name)
        if m is not None:
            utts.append(Utterance(f, m.group(1), "librispeech"))
    if not utts:
        raise _no_utterances(root, LIBRISPEECH_LAYOUTS)
    return utts


def discover_flat(root: str | os.PathLike) -> list[Utterance]:
    """Every ``*.wav`` / ``*.flac`` directly in ``root`` (or, when it holds none, in ``root/wavs``, the
    LJSpeech layout), whatever their names, sorted by path; one speaker, named after ``root``'s folder."""
    root = _check_root(root)
    for base in (root, root / "wavs"):
        if base.is_dir():
            files = _sorted_files(base, (".wav", ".flac"))
            if files:
                return [Utterance(f, root.name, "flat") for f in files]
    raise _no_utterances(root, FLAT_LAYOUTS)


def discover_utterances(root: str | os.PathLike, corpus: str = "auto", mic: str = "mic1") -> list[Utterance]:
    """Utterances under ``root``; ``corpus`` is ``"vctk"``, ``"librispeech"``, ``"flat"`` or ``"auto"`` (the
    first of VCTK, LibriSpeech and flat that finds any; see the module docstring for each layout)."""
    finders = {
        "vctk": lambda: discover_vctk(root, mic=mic),
        "librispeech": lambda: discover_librispeech(root),
        "flat": lambda: discover_flat(root),
    }
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    if corpus != "auto":
        return finders[corpus]()
    root = _check_root(root)
    for find in finders.values():
        try:
            return find()
        except FileNotFoundError:
            continue
    raise _no_utterances(root, VCTK_LAYOUTS + LIBRISPEECH_LAYOUTS + FLAT_LAYOUTS)


def sample_rates(utterances: Sequence[Utterance | str | os.PathLike]) -> dict[int, int]:
    """How many of the files (``Utterance`` s or paths) have each native sample rate, read from their headers
    (no audio is decoded): ``{48000: 10}`` means ten files that :func:`load_audio` will resample."""
    counts: dict[int, int] = {}
    for u in utterances:
        path = u.path if isinstance(u, Utterance) else Path(u)
        try:
            sr = sf.info(str(path)).samplerate
        except sf.LibsndfileError as e:
            raise ValueError(f"cannot read the audio header of {path}: {e}") from e
        counts[sr] = counts.get(sr, 0) + 1
    return dict(sorted(counts.items()))


def _wav_header_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE file's ``data`` chunk declares, or None (not RIFF/WAVE, or a streaming placeholder).

    Walks the chunk list reading only headers, so the cost does not grow with the file.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                fmt = f.read(min(size, 16))
                if len(fmt) < 14:
                    return None
                block_align = int.from_bytes(fmt[12:14], "little")
                f.seek(size - len(fmt) + (size & 1), os.SEEK_CUR)
            elif cid == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave before they know the length.
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor ``(L,)`` at ``sample_rate`` (channels averaged).

    Raises ``ValueError`` naming the file when it cannot be decoded or is truncated (its header declares
    more frames than the file holds); a silently shortened waveform would otherwise bias every statistic.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    try:
        header_frames = sf.info(str(path)).frames
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:  # corrupt header or stream (e.g. "flac decoder lost sync")
        raise ValueError(f"cannot decode audio file {path} (corrupt or truncated?): {e}") from e
    wav_frames = _wav_header_frames(path)
    if wav_frames is not None:  # libsndfile trims a WAV's frame count to the bytes present: trust the header
        header_frames = wav_frames
    if len(data) < header_frames:
        raise ValueError(
            f"audio file {path} is truncated: its header says {header_frames} frames, "
            f"only {len(data)} could be read"
        )
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, orig_freq=sr, new_freq=sample_rate)
    return wave.to(torch.float32)


def split_by_speaker(
    utterances: Sequence[Utterance],
    train: float = 0.8,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    speakers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Utterance]]:
    """Split utterances into ``{"train", "val", "test"}`` with disjoint speakers.

    Either by fractions of the speakers (shuffled with ``seed``; the fractions may sum to less than 1 --
    the dissertation trains on 10% of the speakers, ``train=0.1`` -- and each non-zero fraction gets at
    least one speaker), or by explicit lists, ``speakers={"train": [...], "val": [...], "test": [...]}``
    (missing keys mean an empty split).
    """
    if not utterances:
        raise ValueError("utterances must be a non-empty sequence of Utterance")
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    names = ("train", "val", "test")
    if speakers is not None:
        unknown = set(speakers) - set(names)
        if unknown:
            raise ValueError(f"speakers keys must be among {names}, got {sorted(unknown)}")
        chosen = {k: list(speakers.get(k, ())) for k in names}
        seen: set[str] = set()
        for k in names:
            missing = [s for s in chosen[k] if s not in by_speaker]
            if missing:
                raise ValueError(f"speakers[{k!r}] has speakers with no utterances: {missing}")
            overlap = seen.intersection(chosen[k])
            if overlap:
                raise ValueError(f"speaker lists must be disjoint; {sorted(overlap)} appear twice")
            seen.update(chosen[k])
    else:
        fracs = dict(zip(names, (train, val, test)))
        for k, f in fracs.items():
            if not 0 <= f <= 1:
                raise ValueError(f"{k} must be a fraction in [0, 1], got {f!r}")
        if sum(fracs.values()) > 1 + 1e-9:
            raise ValueError(f"train + val + test must be <= 1, got {sum(fracs.values())}")
        spk = sorted(by_speaker)
        order = np.random.default_rng(seed).permutation(len(spk))
        counts = {k: (max(1, round(f * len(spk))) if f > 0 else 0) for k, f in fracs.items()}
        if sum(counts.values()) > len(spk):
            raise ValueError(
                f"cannot give every non-zero split at least one speaker: {len(spk)} speakers, "
                f"fractions train={train}, val={val}, test={test}"
            )
        chosen, start = {}, 0
        for k in names:
            chosen[k] = [spk[i] for i in order[start : start + counts[k]]]
            start += counts[k]
    return {k: [u for s in sorted(chosen[k]) for u in by_speaker[s]] for k in names}


Source = Utterance | str | os.PathLike | torch.Tensor


def _check_sources(sources: Sequence[Source]) -> None:
    if isinstance(sources, (str, os.PathLike, torch.Tensor, Utterance)) or len(sources) == 0:
        raise ValueError("sources must be a non-empty sequence of Utterance, paths or 1-D waveform tensors")


def _spectrum(i: int, src: Source, sample_rate: int, n_fft: int, hop_length: int) -> torch.Tensor:
    """The complex STFT ``(F, T)`` of ``sources[i]``."""
    if isinstance(src, torch.Tensor):
        if src.ndim != 1 or src.is_complex():
            raise ValueError(f"sources[{i}] must be a real 1-D waveform, got shape {tuple(src.shape)}")
        wave = src.to(torch.float32)
        where = f"sources[{i}]"
    else:
        path = src.path if isinstance(src, Utterance) else src
        wave = load_audio(path, sample_rate)
        where = f"sources[{i}] ({path})"
    if wave.shape[0] <= n_fft // 2:  # name the file here: stft's own error cannot
        what = "no samples (empty audio)" if wave.shape[0] == 0 else f"only {wave.shape[0]} samples"
        raise ValueError(
            f"{where} has {what} at {sample_rate} Hz; the STFT needs more than n_fft/2 = {n_fft // 2}"
        )
    return stft(wave, n_fft=n_fft, hop_length=hop_length)


def _iter_spectra(
    sources: Sequence[Source], sample_rate: int, n_fft: int, hop_length: int
) -> Iterator[torch.Tensor]:
    _check_sources(sources)
    for i, src in enumerate(sources):
        yield _spectrum(i, src, sample_rate, n_fft, hop_length)


def _spectra(sources: Sequence[Source], sample_rate: int, n_fft: int, hop_length: int) -> list[torch.Tensor]:
    return list(_iter_spectra(sources, sample_rate, n_fft, hop_length))


class SpeechFrames(Dataset):
    """Every ``every``-th STFT frame of all utterances: complex ``(N, F)`` in ``.data``.

    For the fully-connected models (frames are modelled independently; sub-sampling by ``every``,
    default 10, removes most of the overlap between neighbouring 64 ms frames). ``sources`` are
    :class:`Utterance` s, file paths or 16 kHz waveforms; ``.utterance_index[i]`` says where frame ``i``
    came from.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        every: int = 10,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        specs = _spectra(sources, sample_rate, n_fft, hop_length)
        frames = [s[:, ::every].T for s in specs]
        self.data = torch.cat(frames)
        self.utterance_index = torch.cat(
            [torch.full((len(f),), i, dtype=torch.long) for i, f in enumerate(frames)]
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


class SpeechWindows(Dataset):
    """``n_windows`` random windows of ``frames`` consecutive STFT frames: complex ``(N, F, T)`` in ``.data``.

    For the convolutional / recurrent models. Windows are drawn once, at construction, with ``seed``:
    an utterance is picked with probability proportional to how many windows fit in it, then a uniform
    start frame. Utterances shorter than ``frames`` are skipped (an error if all are).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        n_windows: int,
        frames: int = 64,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
    ) -> None:
        for name, v in (("n_windows", n_windows), ("frames", frames)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        specs = _spectra(sources, sample_rate, n_fft, hop_length)
        fits = torch.tensor([max(s.shape[-1] - frames + 1, 0) for s in specs], dtype=torch.float64)
        if fits.sum() == 0:
            longest = max(s.shape[-1] for s in specs)
            raise ValueError(f"frames={frames} is longer than every utterance (longest has {longest} frames)")
        gen = torch.Generator().manual_seed(seed)
        utt = torch.multinomial(fits, n_windows, replacement=True, generator=gen)
        start = (torch.rand(n_windows, generator=gen, dtype=torch.float64) * fits[utt]).long()
        self.data = torch.stack([specs[u][:, s : s + frames] for u, s in zip(utt.tolist(), start.tolist())])
        self.utterance_index = utt
        self.start_frame = start

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


_CACHE_VERSION = 1
_NPY_HEADER = 128  # bytes: a fixed-size .npy v1.0 header, rewritten in place once the frame count is known


def _npy_header(shape: tuple[int, ...], descr: str = "<c8") -> bytes:
    """A ``.npy`` (format 1.0) header of exactly ``_NPY_HEADER`` bytes for a C-ordered array."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(int(d) for d in shape)})
    size = _NPY_HEADER - 10  # magic (6) + version (2) + header length (2)
    if len(text) >= size:
        raise ValueError(f"shape {shape} does not fit a {_NPY_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + size.to_bytes(2, "little") + (text.ljust(size - 1) + "\n").encode("latin1")


def _source_id(i: int, src: Source) -> str:
    """What identifies a source's audio: a file's resolved path, size and modification time; a waveform's
    bytes (hashed)."""
    if isinstance(src, torch.Tensor):
        data = src.detach().cpu().contiguous()
        digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()
        return f"tensor {data.dtype} {tuple(data.shape)} {digest}"
    path = Path(src.path if isinstance(src, Utterance) else src)
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"audio file not found: {path} (sources[{i}])") from e
    return f"{path.resolve()} {st.st_size} {st.st_mtime_ns}"


class SpeechFrameCache(Dataset):
    """The frames of :class:`SpeechFrames` (every ``every``-th STFT frame of all utterances, complex
    ``(N, F)``), kept on disk in ``path`` (a folder) instead of memory.

    Files: ``frames.npy`` (complex64 ``(N, F)``, opened as a read-only memory map) and ``cache.json`` (the
    key: the settings and a fingerprint of the sources -- each file's resolved path, size and modification
    time, or a waveform's bytes -- plus the frame count of each utterance). Opening a folder whose
    ``cache.json`` matches the sources and settings (and whose ``frames.npy`` has the recorded shape)
    reuses it without reading any audio (``status == "reused"``). Otherwise the frames are computed
    utterance by utterance, appended to a temporary file (peak memory: one utterance) and renamed into
    place, ``cache.json`` last; a mismatching cache is **rebuilt**, replacing the old files
    (``status == "rebuilt"``; ``"built"`` when there was none). A half-written cache never counts as one.

    ``dataset.__getitems__(indices)`` is a complex64 batch ``(B, F)`` (what :class:`genlib.train.StepBatches`
    reads), ``dataset[i]`` frame ``i``; the values equal ``SpeechFrames(sources, every, ...).data``.
    ``utterance_index[i]`` says where frame ``i`` came from. Pickling (``DataLoader`` workers) carries the
    path, not the frames. Concurrent builders of one folder (e.g. ranks under ``torchrun``) each write their
    own temporary file; the last rename wins with the same content.
    """

    FRAMES = "frames.npy"
    META = "cache.json"

    def __init__(
        self,
        sources: Sequence[Source],
        path: str | os.PathLike,
        every: int = 10,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
    ) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        _check_sources(sources)
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"frame cache path must be a folder, got a file: {self.path}")
        fingerprint = hashlib.sha256(
            "\n".join(_source_id(i, s) for i, s in enumerate(sources)).encode()
        ).hexdigest()
        self.key = {"version": _CACHE_VERSION, "every": every, "sample_rate": sample_rate, "n_fft": n_fft,
                    "hop_length": hop_length, "n_sources": len(sources), "sources_sha256": fingerprint}
        meta_path, frames_path = self.path / self.META, self.path / self.FRAMES
        meta = self._read_meta(meta_path)
        if meta is not None and meta.get("key") == self.key and self._open_ok(frames_path, meta):
            self.status = "reused"
        else:
            self.status = "built" if meta is None and not frames_path.exists() else "rebuilt"
            meta = self._build(sources, meta_path, frames_path)
            if not self._open_ok(frames_path, meta):
                raise RuntimeError(f"{frames_path}: the frames just written do not read back")
        self.counts = torch.tensor(meta["counts"], dtype=torch.long)

    @staticmethod
    def _read_meta(meta_path: Path) -> dict | None:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _open_ok(self, frames_path: Path, meta: dict) -> bool:
        """Open ``frames.npy`` as a memory map; False when it is missing or not what ``meta`` records."""
        try:
            frames = _random_access(np.load(frames_path, mmap_mode="r"))
        except (OSError, ValueError):
            return False
        if frames.dtype != np.complex64 or frames.shape != (meta.get("n_frames"), meta.get("n_freq")):
            return False
        self._frames = frames
        return True

    def _build(self, sources: Sequence[Source], meta_path: Path, frames_path: Path) -> dict:
        k = self.key
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)  # the old key must not vouch for the frames being replaced
        counts: list[int] = []
        n_freq = [0]

        def write(f) -> None:
            f.write(b"\0" * _NPY_HEADER)
            for i, src in enumerate(sources):
                spec = _spectrum(i, src, k["sample_rate"], k["n_fft"], k["hop_length"])
                frames = spec[:, :: k["every"]].T.contiguous().to(torch.complex64).numpy()
                n_freq[0] = frames.shape[1]
                counts.append(frames.shape[0])
                f.write(frames.tobytes())
            f.seek(0)
            f.write(_npy_header((sum(counts), n_freq[0])))
            f.seek(0, os.SEEK_END)

        _atomic_write(frames_path, write)
        meta = {"key": k, "n_frames": sum(counts), "n_freq": n_freq[0], "counts": counts}
        atomic_write_text(meta_path, json.dumps(meta) + "\n")
        return meta

    # ------------------------------------------------------------------ dataset
    @property
    def frames(self) -> np.ndarray:
        """All frames, complex64 ``(N, F)``, as a read-only memory map."""
        if "_frames" not in self.__dict__:
            self._frames = _random_access(np.load(self.path / self.FRAMES, mmap_mode="r"))
        return self._frames

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_frames", None)  # a memmap pickles as a copy of its data: reopen instead
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def utterance_index(self) -> torch.Tensor:
        """``(N,)``: the source each frame came from."""
        return torch.repeat_interleave(torch.arange(len(self.counts)), self.counts)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        rows = _checked_indices(indices, len(self), "frames")
        return torch.from_numpy(_gather_sorted(self.frames, rows))  # complex64: checked when opened

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([int(i)])[0]

    def __repr__(self) -> str:
        return f"SpeechFrameCache({str(self.path)!r}, {len(self)} frames, {self.status})"
