"""Image datasets: scikit-learn's digits, the shared MNIST subset, SVHN (torchvision), PNG crops.

Every ``load_*`` loader returns ``(images, labels)``: ``images`` a float32 tensor ``(N, C, H, W)`` in [0, 1]
and ``labels`` an int64 tensor ``(N,)`` (``-1`` marks an unlabelled example). Nothing is downloaded unless a
loader is called with ``download=True``.

Data too large for a float tensor (SVHN ``extra``: 531,131 images, ~6.5 GB as float32) streams from disk:
:class:`MemmapImages` is a map-style ``torch.utils.data.Dataset`` over uint8 images in a ``.npy`` file opened
as a memory map (only the pages a batch touches are read; ~1.6 GB of uint8 on disk for ``extra``), whose
``__getitems__`` returns float32 batches in [0, 1] -- what :class:`genlib.train.StepBatches` and a
``DataLoader`` with workers read. :func:`svhn_dataset` converts an official SVHN ``.mat`` into such a file
once (atomically, into a cache folder) and afterwards opens it without reading the ``.mat``.
:class:`ConcatImages` chains image datasets, batch-reading each part.

Semi-supervised protocols draw a balanced labelled subset with :func:`semi_supervised_split`;
:func:`load_svhn_semi_supervised` applies the standard SVHN one (a few labels from ``train``, the rest of
``train`` -- and optionally ``extra``, streamed -- unlabelled, the official ``test`` split for evaluation).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from genlib.utils import _atomic_write, atomic_write_text

__all__ = [
    "DATA_ROOT_ENV",
    "default_data_root",
    "load_digits_sklearn",
    "load_mnist_npz",
    "load_svhn",
    "MemmapImages",
    "ConcatImages",
    "svhn_dataset",
    "load_image_folder_crops",
    "SplitIndices",
    "semi_supervised_split",
    "SemiSupervisedData",
    "load_svhn_semi_supervised",
]

#: Environment variable that overrides where :func:`default_data_root` looks first.
DATA_ROOT_ENV = "GENLIB_DATA_ROOT"

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _uint8_to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], dividing in place so large datasets need only the float copy."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    return t.to(torch.float32).div_(255.0)


# ---------------------------------------------------------------------------------------------- data root


def default_data_root() -> Path:
    """The folder holding the project's real data (``digits/``, ``speech/``).

    Looked up, first existing wins: ``$GENLIB_DATA_ROOT``; ``../shared/data`` relative to the current
    directory; ``../shared/data`` relative to the project root (the folder holding ``genlib/``). Raises
    ``FileNotFoundError`` listing every place tried.
    """
    candidates: list[Path] = []
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [Path.cwd() / ".." / "shared" / "data", _PROJECT_ROOT / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no data folder found (tried {tried}); set ${DATA_ROOT_ENV} or pass an explicit path"
    )


# ---------------------------------------------------------------------------------------------- loaders


def load_digits_sklearn(image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

    Pixel counts 0..16 are scaled to [0, 1]. With ``image_size`` (e.g. 28 or 32) the images are upsampled
    bilinearly, which keeps values in [0, 1]. Returns ``(images (1797, 1, S, S), labels (1797,))``.
    """
    from sklearn.datasets import load_digits

    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 8):
        raise ValueError(f"image_size must be None or an int >= 8, got {image_size!r}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size is not None and image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)  # float rounding only: bilinear weights are convex
    return images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64))


def _bad_values(values: np.ndarray, bad: np.ndarray, limit: int = 5) -> str:
    """``"11, -1 (3 of 4000 entries)"``: a few distinct offending values and how many there are."""
    shown = np.unique(values[bad])[:limit].tolist()
    return f"{', '.join(repr(v) for v in shown)} ({int(bad.sum())} of {values.size} entries)"


def load_mnist_npz(
    path: str | os.PathLike | None = None, *, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST ``.npz``: ``images`` ``(N, 28, 28)``, integer ``labels`` ``(N,)`` in ``0..num_classes-1``.

    ``images`` are uint8 (0..255) or floats already in [0, 1]. ``path`` defaults to ``digits/mnist_4k.npz``
    under :func:`default_data_root` (4000 real digits, 400 per class). Returns ``(images (N, 1, 28, 28)``
    float32 in [0, 1], ``labels (N,)`` int64). Raises ``ValueError`` naming the file and the offending values
    for any other dtype, shape or range: a label 11 or -1 would otherwise surface much later as an
    index error inside a loss, or silently as an "unlabelled" example.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    path = Path(path) if path is not None else default_data_root() / "digits" / "mnist_4k.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST npz not found: {path} (expected arrays 'images' (N,28,28) and 'labels')"
        )
    with np.load(path) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}; it has {sorted(f.files)}")
        images, labels = f["images"], f["labels"]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: 'images' must have shape (N, 28, 28), got {images.shape}")
    if images.dtype == np.uint8:
        x = _uint8_to_float(images)
    elif np.issubdtype(images.dtype, np.floating):
        bad = ~((images >= 0) & (images <= 1))  # also catches NaN
        if bad.any():
            raise ValueError(
                f"{path}: float 'images' must lie in [0, 1] (or be uint8 0..255), found "
                f"{_bad_values(images, bad)}"
            )
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    else:
        raise ValueError(f"{path}: 'images' must be uint8 or float in [0, 1], got dtype {images.dtype}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: 'labels' must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be an integer array, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"{path}: 'labels' must lie in [0, {num_classes}) (num_classes={num_classes}), found "
            f"{_bad_values(labels, bad)}"
        )
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _read_svhn_mat(data_dir: str | os.PathLike, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 3, 32, 32) view, int64 labels (N,))`` of an official SVHN ``.mat``, read by torchvision
    (md5-checked; see :func:`load_svhn` for the errors)."""
    from torchvision.datasets import SVHN  # importing torchvision costs seconds: only here

    if split not in SVHN.split_list:
        raise ValueError(f"split must be one of {sorted(SVHN.split_list)}, got {split!r}")
    data_dir = Path(data_dir)
    _, filename, md5 = SVHN.split_list[split]
    path = data_dir / filename
    if not download and not path.is_file():
        names = ", ".join(entry[1] for entry in SVHN.split_list.values())
        raise FileNotFoundError(
            f"SVHN {split} file not found: {path} (expected the official files {names} in {data_dir}; "
            "pass download=True to fetch)"
        )
    try:
        dataset = SVHN(str(data_dir), split=split, download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted": the md5 differs
        raise ValueError(
            f"{path} is not the official SVHN {split} file (md5 {md5} expected); delete it and pass "
            "download=True, or fetch it again"
        ) from err
    # data: uint8 (N, 3, 32, 32), torchvision's transpose of the file's (32, 32, 3, N)
    return dataset.data, np.asarray(dataset.labels, dtype=np.int64).reshape(-1)


def load_svhn(
    data_dir: str | os.PathLike, split: str = "train", download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN cropped digits as tensors, read by ``torchvision.datasets.SVHN`` from ``{split}_32x32.mat``.

    ``split`` is ``"train"`` (73,257 images), ``"test"`` (26,032) or ``"extra"`` (531,131; ~6.5 GB as
    float32: stream it with :func:`svhn_dataset` instead). Returns ``(images (N, 3, 32, 32)`` float32 in
    [0, 1], ``labels (N,)`` int64 0..9) -- the file's label 10 is the digit 0, as torchvision maps it.
    torchvision checks the file's md5 against the official one; with ``download=True`` a missing file is
    fetched from the official URL (needs internet). Raises ``FileNotFoundError`` for a missing file without
    ``download``, ``ValueError`` for a file that is not the official one.
    """
    data, labels = _read_svhn_mat(data_dir, split, download)
    return _uint8_to_float(data), torch.from_numpy(labels)


# ---------------------------------------------------------------------------------------------- on disk


def _random_access(array: np.ndarray) -> np.ndarray:
    """Tell the OS a memory map is read at random (``MADV_RANDOM``): no read-ahead around each touched page.
    Random batches from SVHN ``extra`` then read ~10x less and map ~6x fewer pages (measured: 200 batches of
    100 images, 0.7 s and 136 MiB of mapped file pages instead of 6.9 s and 890 MiB)."""
    import mmap

    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            handle.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):  # advice only
            pass
    return array


def _checked_indices(indices: Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    """``indices`` into ``n`` items as int64 in ``[0, n)`` (negative ones count from the end, as in
    Python); ``IndexError`` naming ``n`` and ``what`` for any outside ``[-n, n)``."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range for {n} {what}")
    return np.where(idx < 0, idx + n, idx)


def _gather_sorted(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read in file order, so a memory map touches each page once, and returned in the
    asked order."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((rows.size, *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out


class MemmapImages(Dataset):
    """uint8 images ``(N, C, H, W)`` in a ``.npy`` file, read through a memory map: a map-style dataset.

    ``dataset[i]`` is image ``i`` as float32 ``(C, H, W)`` in [0, 1]; ``dataset.__getitems__(indices)`` (what
    :class:`genlib.train.StepBatches` and a ``DataLoader``'s fetcher call) one float32 batch ``(B, C, H, W)``
    -- the same values as :func:`load_svhn`'s tensors (``uint8 / 255`` in float32). Only the pages a batch
    touches are read, so opening even SVHN ``extra`` costs a few kB of memory; the OS page cache keeps hot
    pages. ``labels`` (int64 ``(N,)`` or ``None``) are read from ``labels_path`` (a ``.npy`` of integers)
    into memory. ``indices`` restricts the dataset to those rows of the file (in that order), as
    :meth:`subset` does. Pickling (``DataLoader`` workers under spawn) carries the paths, not the data:
    each process opens its own map.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        labels_path: str | os.PathLike | None = None,
        indices: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    ):
        self.path = Path(path)
        self.labels_path = None if labels_path is None else Path(labels_path)
        images = self._open()
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"{self.path}: expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}"
            )
        n_file = images.shape[0]
        self.image_shape: tuple[int, ...] = tuple(images.shape[1:])
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_file):
                raise ValueError(f"indices must lie in [0, {n_file}) (the images in {self.path})")
            self.indices: torch.Tensor | None = idx
        else:
            self.indices = None
        self.labels: torch.Tensor | None = None
        if self.labels_path is not None:
            labels = np.load(self.labels_path)
            if labels.shape != (n_file,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{self.labels_path}: expected {n_file} integer labels, got {labels.dtype} {labels.shape}"
                )
            all_labels = torch.from_numpy(labels.astype(np.int64))
            self.labels = all_labels if self.indices is None else all_labels[self.indices]

    def _open(self) -> np.ndarray:
        if not self.path.is_file():
            raise FileNotFoundError(f"image file not found: {self.path}")
        self._images = _random_access(np.load(self.path, mmap_mode="r"))
        return self._images

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_images", None)  # a memmap pickles as a full copy of the data: reopen instead
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def images(self) -> np.ndarray:
        """The whole file's uint8 images as a read-only memory map."""
        if "_images" not in self.__dict__:
            self._open()
        return self._images

    def __len__(self) -> int:
        return self.images.shape[0] if self.indices is None else self.indices.numel()

    def _rows(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = _checked_indices(idx, len(self), "images")
        return idx if self.indices is None else self.indices.numpy()[idx]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        return _uint8_to_float(_gather_sorted(self.images, self._rows(indices)))

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__getitems__([int(i)])[0]

    def subset(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> MemmapImages:
        """The images at ``indices`` (of this dataset) as a dataset over the same file (nothing copied)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        rows = torch.from_numpy(self._rows(idx.numpy()))
        out = MemmapImages.__new__(MemmapImages)
        out.__dict__.update(self.__getstate__())
        out.indices = rows
        out.labels = None if self.labels is None else self.labels[idx]
        return out

    def tensor(self) -> torch.Tensor:
        """Every image as one float32 tensor ``(N, C, H, W)`` (in memory: for small splits)."""
        return self.__getitems__(range(len(self)))

    def __repr__(self) -> str:
        return f"MemmapImages({str(self.path)!r}, {len(self)} images {self.image_shape})"


class ConcatImages(Dataset):
    """Image datasets (tensors ``(N, C, H, W)`` or map-style datasets of one image shape) in sequence.

    Like ``torch.utils.data.ConcatDataset``, with a ``__getitems__`` that reads each part's share of a batch
    in one call (its own ``__getitems__`` when it has one) and returns one float tensor in the asked order.
    ``labels`` is the parts' labels concatenated when every part has them (tensors: none).
    """

    def __init__(self, parts: Sequence[torch.Tensor | Dataset]):
        self.parts = list(parts)
        if not self.parts:
            raise ValueError("ConcatImages needs at least one part")
        self.lengths = [p.shape[0] if isinstance(p, torch.Tensor) else len(p) for p in self.parts]
        self.offsets = np.cumsum([0, *self.lengths]).tolist()
        labels = [getattr(p, "labels", None) for p in self.parts]
        self.labels = None if any(lab is None for lab in labels) else torch.cat(labels)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _checked_indices(indices, len(self), "images")
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        out: torch.Tensor | None = None
        for k in np.unique(part).tolist():
            where = np.nonzero(part == k)[0]
            local = (idx[where] - self.offsets[k]).tolist()
            src = self.parts[k]
            if isinstance(src, torch.Tensor):
                got = src[torch.as_tensor(local)]
            elif hasattr(src, "__getitems__"):
                got = src.__getitems__(local)
            else:
                got = torch.stack([src[i] for i in local])
            if out is None:
                out = got.new_empty((idx.size, *got.shape[1:]))
            out[torch.from_numpy(where)] = got
        if out is None:  # an empty batch
            first = self[0] if len(self) else torch.empty(0)
            return first.new_empty((0, *first.shape))
        return out

    def __getitem__(self, i: int) -> torch.Tensor:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        k = bisect.bisect_right(self.offsets, i) - 1
        return self.parts[k][i - self.offsets[k]]


_SVHN_CACHE_VERSION = 1


def svhn_dataset(
    data_dir: str | os.PathLike,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> MemmapImages:
    """SVHN ``split`` as a :class:`MemmapImages` (with ``labels``, 0..9) streaming from a uint8 ``.npy``.

    The first call reads the official ``{split}_32x32.mat`` from ``data_dir`` through torchvision (md5
    checked, ``download`` as in :func:`load_svhn`; the uint8 images are held in memory once, ~1.6 GB for
    ``extra``) and writes ``{split}_32x32.uint8.npy`` (images ``(N, 3, 32, 32)``),
    ``{split}_32x32.labels.npy`` and ``{split}_32x32.cache.json`` (the ``.mat``'s official md5, the count)
    into ``cache_dir`` (default ``data_dir``), each atomically, the JSON last. Later calls open the cache
    without touching the ``.mat`` (which may then be deleted). A cache whose JSON is missing, names another
    md5 or does not match its arrays is rebuilt from the ``.mat``.
    """
    from torchvision.datasets import SVHN

    if split not in SVHN.split_list:
        raise ValueError(f"split must be one of {sorted(SVHN.split_list)}, got {split!r}")
    md5 = SVHN.split_list[split][2]
    cache = Path(cache_dir) if cache_dir is not None else Path(data_dir)
    images_path = cache / f"{split}_32x32.uint8.npy"
    labels_path = cache / f"{split}_32x32.labels.npy"
    meta_path = cache / f"{split}_32x32.cache.json"
    expected = {"version": _SVHN_CACHE_VERSION, "split": split, "md5": md5}
    if meta_path.is_file() and images_path.is_file() and labels_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta.get(k) for k in expected} == expected:
                ds = MemmapImages(images_path, labels_path)
                if len(ds) == meta.get("n") and ds.image_shape == (3, 32, 32):
                    return ds
        except (ValueError, OSError):  # unreadable or inconsistent: rebuilt below
            pass
    data, labels = _read_svhn_mat(data_dir, split, download)
    cache.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # the arrays change before the JSON that vouches for them is back
    _atomic_write(images_path, lambda f: np.save(f, data))  # streamed in chunks: no second copy
    _atomic_write(labels_path, lambda f: np.save(f, labels))
    atomic_write_text(meta_path, json.dumps({**expected, "n": int(labels.shape[0])}) + "\n")
    return MemmapImages(images_path, labels_path)


_DIGIT_NAME = re.compile(r"_digit_(\d+)$")
_UNLABELED_NAME = re.compile(r"^unlabeled_\d+$")


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def load_image_folder_crops(folder: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-sized PNG crops named ``<anything>_digit_K.png`` (class K) or ``unlabeled_N.png`` (label -1).

    ``folder`` defaults to ``digits/svhn_real_crops`` under :func:`default_data_root`. Files are read as RGB
    in natural name order (with PIL: importing torchvision.io costs seconds). Returns
    ``(images (N, 3, H, W), labels (N,))``.
    """
    from PIL import Image

    folder = Path(folder) if folder is not None else default_data_root() / "digits" / "svhn_real_crops"
    if not folder.is_dir():
        raise FileNotFoundError(f"crop folder not found: {folder} (expected *_digit_K.png / unlabeled_N.png)")
    files = sorted(folder.glob("*.png"), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"no .png files in {folder} (expected *_digit_K.png / unlabeled_N.png)")
    images, labels = [], []
    for f in files:
        m = _DIGIT_NAME.search(f.stem)
        if m:
            labels.append(int(m.group(1)))
        elif _UNLABELED_NAME.match(f.stem):
            labels.append(-1)
        else:
            raise ValueError(
                f"cannot read a label from {f.name}: expected <name>_digit_K.png or unlabeled_N.png"
            )
        with Image.open(f) as im:
            images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"crops in {folder} differ in size: {sorted(shapes)}")
    return _uint8_to_float(torch.stack(images)), torch.tensor(labels, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------- splits


class SplitIndices(NamedTuple):
    """Index tensors (int64, ascending) of a semi-supervised split; the three sets are disjoint."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    test: torch.Tensor


def _as_labels(labels: Any) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        got = tuple(labels.shape) if hasattr(labels, "shape") else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor or array, got {got}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integers (-1 = unlabelled), got dtype {labels.dtype}")
    labels = labels.long().cpu()
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"labels must be >= -1 (-1 = unlabelled), got min {int(labels.min())}")
    return labels


def semi_supervised_split(
    labels: torch.Tensor | np.ndarray,
    n_labeled: int = 1000,
    n_test: int = 0,
    seed: int = 0,
    balanced: bool = True,
    num_classes: int | None = None,
) -> SplitIndices:
    """Split example indices into a labelled subset, the unlabelled rest and an optional held-out test set.

    The test set (``n_test`` examples, uniformly at random among labelled ones) is drawn first. The labelled
    subset then takes ``n_labeled / K`` examples of each of the ``K`` classes when ``balanced`` (an error if
    ``n_labeled`` is not a multiple of ``K`` or a class has too few examples), else ``n_labeled`` uniformly.
    Everything else, including examples labelled ``-1``, is unlabelled. ``K`` is ``num_classes`` or
    ``max(labels) + 1``. The same ``seed`` always gives the same split.
    """
    labels = _as_labels(labels)
    for name, v in (("n_labeled", n_labeled), ("n_test", n_test), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    known = torch.nonzero(labels >= 0).flatten()
    if n_test + n_labeled > known.numel():
        raise ValueError(
            f"n_labeled + n_test = {n_labeled + n_test} exceeds the {known.numel()} labelled examples"
        )
    g = torch.Generator().manual_seed(seed)
    perm = known[torch.randperm(known.numel(), generator=g)]
    test, pool = perm[:n_test], perm[n_test:]
    if balanced and n_labeled > 0:
        k = num_classes if num_classes is not None else int(labels.max()) + 1
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if int(labels.max()) >= k:
            raise ValueError(f"labels must be < num_classes={k}, got max {int(labels.max())}")
        if n_labeled % k:
            raise ValueError(f"balanced split needs n_labeled divisible by the {k} classes, got {n_labeled}")
        per_class = n_labeled // k
        chosen = []
        pool_labels = labels[pool]  # pool is already shuffled: the first per_class of each class are random
        for c in range(k):
            members = pool[pool_labels == c]
            if members.numel() < per_class:
                raise ValueError(
                    f"class {c} has {members.numel()} examples outside the test set, need {per_class} "
                    f"(n_labeled={n_labeled} over {k} classes)"
                )
            chosen.append(members[:per_class])
        labeled = torch.cat(chosen)
    else:
        labeled = pool[:n_labeled]
    taken = torch.zeros(labels.numel(), dtype=torch.bool)
    taken[labeled] = True
    taken[test] = True
    unlabeled = torch.nonzero(~taken).flatten()
    return SplitIndices(labeled.sort().values, unlabeled, test.sort().values)


@dataclass
class SemiSupervisedData:
    """The splits of a semi-supervised image task.

    Every field is a tensor except possibly ``x_unlabeled``: a float32 tensor ``(N, C, H, W)``, or, when the
    unlabelled images are too many for memory (:func:`load_svhn_semi_supervised` with ``include_extra``), a
    map-style ``Dataset`` of ``N`` such images whose ``__getitems__`` returns float32 batches (e.g.
    :class:`ConcatImages` of :class:`MemmapImages`) -- what :meth:`genlib.train.SemiSupervisedTrainer.fit`
    and :class:`genlib.train.StepBatches` accept; ``len(x_unlabeled)`` is ``N`` either way.

    ``y_unlabeled`` holds the true labels of the unlabelled images (``-1`` where unknown) for diagnostics
    such as pseudo-label accuracy only; a semi-supervised method must not train on them.
    """

    x_labeled: torch.Tensor
    y_labeled: torch.Tensor
    x_unlabeled: torch.Tensor | Dataset
    y_unlabeled: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_svhn_semi_supervised(
    data_dir: str | os.PathLike,
    n_labeled: int = 1000,
    include_extra: bool = False,
    seed: int = 0,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> SemiSupervisedData:
    """The standard SVHN protocol: ``n_labeled`` balanced labels from ``train``, the rest of ``train``
    (plus all of ``extra`` when ``include_extra``) unlabelled, and the official ``test`` split for testing.

    Without ``include_extra`` every field is an in-memory tensor. With it, ``x_unlabeled`` streams: a
    :class:`ConcatImages` of the unlabelled rows of ``train`` and all of ``extra``, both
    :class:`MemmapImages` over uint8 caches that :func:`svhn_dataset` writes into ``cache_dir`` (default
    ``data_dir``) on first use -- ~1.8 GB on disk instead of ~7.4 GB of float32 in memory. The labelled and
    test images, the split and ``y_unlabeled`` are the same either way.
    """
    x_test, y_test = load_svhn(data_dir, "test", download=download)
    if not include_extra:
        x_train, y_train = load_svhn(data_dir, "train", download=download)
        split = semi_supervised_split(y_train, n_labeled=n_labeled, seed=seed, balanced=True, num_classes=10)
        return SemiSupervisedData(x_train[split.labeled], y_train[split.labeled], x_train[split.unlabeled],
                                  y_train[split.unlabeled], x_test, y_test)
    train = svhn_dataset(data_dir, "train", cache_dir=cache_dir, download=download)
    extra = svhn_dataset(data_dir, "extra", cache_dir=cache_dir, download=download)
    assert train.labels is not None and extra.labels is not None
    split = semi_supervised_split(train.labels, n_labeled=n_labeled, seed=seed, balanced=True, num_classes=10)
    x_unl = ConcatImages([train.subset(split.unlabeled), extra])
    assert x_unl.labels is not None
    return SemiSupervisedData(train.__getitems__(split.labeled.tolist()), train.labels[split.labeled], x_unl,
                              x_unl.labels, x_test, y_test)
