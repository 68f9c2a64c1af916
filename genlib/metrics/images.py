"""Sample-quality metrics for class-conditional image generators, judged by an independent classifier.

A generator's own latent classifier overstates the quality of its draws (it helped shape them), so draws
are scored here with a :class:`ReferenceClassifier`: a small CNN that the user trains on the labelled
images they have (:func:`train_reference_classifier`), saves and loads like any model -- nothing is
downloaded.

- :func:`label_agreement`: how often the reference classifier gives a conditional draw its requested
  class, overall and per class.
- :func:`feature_frechet_distance`: the Fréchet distance between Gaussians fitted to the classifier's
  penultimate features of two image sets (an FID with a task-specific feature extractor; the numbers
  are comparable only under the same classifier and similar set sizes).
- :func:`sample_quality`: both at once, with two reference points printed beside the draws' FD: the
  VAE's reconstructions of real images (what the decoder alone can reach) and a second real set
  (the floor set by finite samples).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genlib.metrics.fad import frechet_distance, gaussian_fit
from genlib.utils import atomic_save, check_int, check_positive, default_device, json_safe

__all__ = [
    "ReferenceClassifier",
    "train_reference_classifier",
    "label_agreement",
    "feature_frechet_distance",
    "SampleQuality",
    "sample_quality",
]

_FORMAT = "genlib.metrics.ReferenceClassifier"
_VERSION = 1
_MIN_SIZE = 8
# Pixel values may exceed [0, 1] by float rounding (e.g. a decoder's affine output); more is a real error.
_RANGE_TOL = 1e-5


# ---------------------------------------------------------------------------------------------- validation


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = ()
    if (
        len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or shape[0] < 1
        or min(shape[1:]) < _MIN_SIZE
    ):
        raise ValueError(
            f"image_shape must be (C, H, W) ints with C >= 1 and H, W >= {_MIN_SIZE}, got {image_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _check_images(x: Any, name: str, image_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``x`` must be a float ``(N, C, H, W)`` tensor in [0, 1] (matching ``image_shape`` when given)."""
    expected = "(N, C, H, W)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a float torch.Tensor {expected} in [0, 1], got {type(x).__name__}")
    if x.ndim != 4 or (image_shape is not None and tuple(x.shape[1:]) != image_shape):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        hint = " (divide uint8 images by 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one image {expected}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name} must hold pixel values in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
            "(clamp decoder outputs, or rescale images stored in [0, 255] or [-1, 1])"
        )
    return x


def _check_labels(y: Any, name: str, n: int, num_classes: int | None) -> torch.Tensor:
    form = f"an int64 tensor of shape ({n},)" + ("" if num_classes is None else f" in [0, {num_classes})")
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be {form}, got {type(y).__name__}")
    if y.dtype != torch.int64 or tuple(y.shape) != (n,):
        raise ValueError(f"{name} must be {form}, got {y.dtype} of shape {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} must be {form}, got a label {int(y.min())} (drop unlabelled examples)")
    if n and num_classes is not None and int(y.max()) >= num_classes:
        raise ValueError(f"{name} must be {form}, got a label {int(y.max())}")
    return y


def _check_classifier(classifier: Any) -> ReferenceClassifier:
    if not isinstance(classifier, ReferenceClassifier):
        raise ValueError(
            "classifier must be a ReferenceClassifier (see train_reference_classifier / "
            f"ReferenceClassifier.load), got {type(classifier).__name__}"
        )
    return classifier


# ---------------------------------------------------------------------------------------------- classifier


class ReferenceClassifier(nn.Module):
    """A small CNN for images ``(N, C, H, W)`` in [0, 1] with ``H, W >= 8`` (digits 8x8, MNIST, SVHN ...).

    Two 3x3 conv + batch-norm stages (``width`` and ``2 * width`` channels, 2x2 max-pooling in
    between), adaptive average pooling to 4x4 (so any image size works), then a ``feature_dim`` ReLU
    layer -- the features used for Fréchet distances -- and a linear layer to ``num_classes`` logits.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, feature_dim: int = 128
    ):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.width = check_int(width, "width")
        self.feature_dim = check_int(feature_dim, "feature_dim")
        c, w = self.image_shape[0], self.width
        # Batch norm makes the few-epoch training that users with few labels can afford converge reliably.
        self.body = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, self.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as plain data."""
        return {
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def _check_shape(self, x: torch.Tensor) -> None:
        # Shape only: the per-batch hot path stays free of value checks (done once in the public helpers).
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.image_shape))}), got {got}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` (after the ReLU)."""
        self._check_shape(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.features(x))

    @torch.no_grad()
    def _batched(self, fn: Any, x: torch.Tensor, batch_size: int, dtype: torch.dtype | None) -> torch.Tensor:
        _check_images(x, "x", self.image_shape)
        check_int(batch_size, "batch_size")
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            out = [
                fn(x[i : i + batch_size].to(param.device, param.dtype)).cpu()
                for i in range(0, len(x), batch_size)
            ]
        finally:
            self.train(was_training)
        out_t = torch.cat(out)
        return out_t if dtype is None else out_t.to(dtype)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Predicted labels (int64, CPU) of images ``x``, in eval mode (the previous mode is restored)."""
        return self._batched(lambda b: self(b).argmax(1), x, batch_size, torch.int64)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """:meth:`features` of images ``x`` in batches: ``(N, feature_dim)`` float64 on the CPU, eval mode."""
        return self._batched(self.features, x, batch_size, torch.float64)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the architecture and weights (plain data + tensors, loadable with ``weights_only=True``)
        atomically to ``path``; returns the path."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return atomic_save(
            {"format": _FORMAT, "version": _VERSION, "config": self.config(), "state": state}, path
        )

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ReferenceClassifier:
        """A classifier written by :meth:`save`, in eval mode.

        Only tensors and plain data are unpickled (``torch.load(weights_only=True)``): a file that would
        run code on load is refused with a ``ValueError`` naming it, as is any file not written by
        :meth:`save`; a missing file raises ``FileNotFoundError``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference classifier file not found: {path}")
        not_ours = (
            f"{path} is not a ReferenceClassifier file (expected one written by ReferenceClassifier.save)"
        )
        try:
            blob = torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
            raise ValueError(f"{not_ours}; torch.load(weights_only=True) refused it: {e}") from e
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(not_ours)
        if blob.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported ReferenceClassifier file version {blob.get('version')!r}")
        try:
            cfg = blob["config"]
            model = cls(
                tuple(cfg["image_shape"]),
                cfg["num_classes"],
                width=cfg["width"],
                feature_dim=cfg["feature_dim"],
            )
            model.load_state_dict(blob["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path}: corrupt ReferenceClassifier file ({e})") from e
        return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------- training


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own integer offset in ``[-max_shift, max_shift]`` pixels per axis.

    Borders are replicated rather than zero-filled so non-black backgrounds (SVHN) gain no dark frame.
    """
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    off = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
    out = torch.empty_like(x)
    # One slice per distinct offset pair (at most (2s+1)^2) instead of a per-image loop.
    key = off[:, 0] * (2 * s + 1) + off[:, 1]
    for k in key.unique().tolist():
        idx = (key == k).nonzero().squeeze(1).to(x.device)
        dy, dx = divmod(k, 2 * s + 1)
        out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
    return out


def train_reference_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int | None = None,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    augment: bool = True,
    width: int = 32,
    feature_dim: int = 128,
    max_shift: int = 2,
) -> ReferenceClassifier:
    """Train a :class:`ReferenceClassifier` on labelled real images ``x`` ``(N, C, H, W)`` in [0, 1], ``y``
    int64 ``(N,)``, with Adam and plain cross-entropy.

    ``num_classes`` defaults to ``y.max() + 1``. With ``augment``, each batch is translated by up to
    ``max_shift`` pixels per image (helps when labels are few). Initialisation, shuffling and
    augmentation draw from ``seed`` only (the global RNG state is left untouched), so on the CPU the
    result is deterministic given the seed. Returned in eval mode on ``device`` (default: the GPU if any).
    On a CPU shared with other jobs, ``torch.set_num_threads(1)`` can train these small batches many
    times faster than the default thread count.
    """
    _check_images(x, "x")
    if num_classes is None:
        _check_labels(y, "y", x.shape[0], None)
        num_classes = max(int(y.max()) + 1, 2)
    check_int(num_classes, "num_classes", minimum=2)
    _check_labels(y, "y", x.shape[0], num_classes)
    check_int(epochs, "epochs")
    check_int(batch_size, "batch_size")
    check_positive(lr, "lr")
    check_int(seed, "seed", minimum=0)
    check_int(max_shift, "max_shift", minimum=0)
    device = torch.device(device) if device is not None else default_device()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceClassifier(tuple(x.shape[1:]), num_classes, width=width, feature_dim=feature_dim)
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx].to(device, torch.float32)
            yb = y[idx].to(device)
            if augment and max_shift > 0:
                xb = _random_shift(xb, max_shift, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        if not bool(torch.isfinite(total_loss)):
            raise RuntimeError(
                f"reference classifier training diverged (non-finite loss) in epoch {epoch + 1}"
            )
        if progress:
            print(
                f"reference classifier epoch {epoch + 1}/{epochs}: loss {float(total_loss) / n:.4f}, "
                f"train accuracy {int(correct) / n:.3f}"
            )
    return model.eval()


# ---------------------------------------------------------------------------------------------- metrics


def label_agreement(classifier: ReferenceClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """How often ``classifier`` labels images ``x`` with the classes ``y`` they were drawn for.

    Returns ``{"overall": float, "per_class": [float | None] * K, "counts": [int] * K}``: the fraction of
    agreeing images, the same within each requested class (``None`` for a class with no images) and
    the number of images per class.
    """
    classifier = _check_classifier(classifier)
    _check_images(x, "x", classifier.image_shape)
    y = _check_labels(y, "y", x.shape[0], classifier.num_classes).cpu()
    hit = classifier.predict(x) == y
    k = classifier.num_classes
    counts = torch.bincount(y, minlength=k)
    hits = torch.bincount(y, weights=hit.double(), minlength=k)
    per_class = [float(hits[c] / counts[c]) if counts[c] > 0 else None for c in range(k)]
    return {"overall": float(hit.double().mean()), "per_class": per_class, "counts": counts.tolist()}


def _check_fd_set(x: torch.Tensor, name: str, classifier: ReferenceClassifier) -> None:
    _check_images(x, name, classifier.image_shape)
    n, d = x.shape[0], classifier.feature_dim
    if n < 2:
        raise ValueError(f"{name} has {n} image(s); a Fréchet distance needs at least 2 to fit a covariance")
    if n < d:
        warnings.warn(
            f"{name} has {n} images, fewer than the classifier's feature_dim {d}: the fitted covariance is "
            "rank-deficient and the Fréchet distance is strongly biased by the sample size "
            "(compare only numbers from equal set sizes, or use several times feature_dim images)",
            RuntimeWarning,
            stacklevel=3,
        )


def feature_frechet_distance(classifier: ReferenceClassifier, x_a: torch.Tensor, x_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``classifier.embed(x_a)`` and ``classifier.embed(x_b)``.

    Each set needs at least 2 images; below ``feature_dim`` images a ``RuntimeWarning`` says the
    covariance is rank-deficient. The distance grows as sets shrink, so compare sets of equal size.
    """
    classifier = _check_classifier(classifier)
    _check_fd_set(x_a, "x_a", classifier)
    _check_fd_set(x_b, "x_b", classifier)
    return frechet_distance(*gaussian_fit(classifier.embed(x_a)), *gaussian_fit(classifier.embed(x_b)))


@dataclass
class SampleQuality:
    """Reference-classifier scores of conditional draws (see :func:`sample_quality`).

    ``fd_*`` are Fréchet distances to the real reference set in the classifier's feature space: of the
    draws, of the VAE's reconstructions (``None`` when not given) and of a second real set (``None``
    when not given). Draws near ``fd_reconstructions`` are as good as the decoder allows; ``fd_real_real``
    is the floor set by finite samples.
    """

    agreement: float
    per_class_agreement: list[float | None]
    fd_samples: float
    fd_reconstructions: float | None
    fd_real_real: float | None
    n_samples: int
    n_reference: int

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict-JSON-ready data (non-finite numbers become ``None``)."""
        return json_safe(asdict(self))

    def format(self) -> str:
        """A few human-readable lines: agreement overall and per class, then the three distances."""

        def pct(v: float | None) -> str:
            return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"

        def num(v: float | None) -> str:
            return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"

        per_class = "  ".join(f"{c}: {pct(v)}" for c, v in enumerate(self.per_class_agreement))
        return "\n".join(
            [
                f"label agreement (reference classifier, {self.n_samples} draws): {pct(self.agreement)}",
                f"  per class: {per_class}",
                f"Fréchet distance to {self.n_reference} real images (classifier features): "
                f"draws {num(self.fd_samples)} | reconstructions {num(self.fd_reconstructions)} | "
                f"real vs real {num(self.fd_real_real)}",
            ]
        )


def sample_quality(
    classifier: ReferenceClassifier,
    x_samples: torch.Tensor,
    y_samples: torch.Tensor,
    x_real: torch.Tensor,
    *,
    x_reconstructions: torch.Tensor | None = None,
    x_real_other: torch.Tensor | None = None,
) -> SampleQuality:
    """Score conditional draws ``x_samples`` (requested classes ``y_samples``) with ``classifier``.

    ``x_real`` holds held-out real images, the reference set of every Fréchet distance;
    ``x_reconstructions`` the VAE's reconstructions of real images and ``x_real_other`` a second real
    set disjoint from ``x_real`` (both optional reference points). Use sets of similar sizes: the
    Fréchet distance depends on the sample size.
    """
    classifier = _check_classifier(classifier)
    sets = {"x_samples": x_samples, "x_real": x_real}
    if x_reconstructions is not None:
        sets["x_reconstructions"] = x_reconstructions
    if x_real_other is not None:
        sets["x_real_other"] = x_real_other
    # Validated up front so errors name this function's arguments, not label_agreement's.
    for name, x in sets.items():
        _check_fd_set(x, name, classifier)
    _check_labels(y_samples, "y_samples", x_samples.shape[0], classifier.num_classes)
    agreement = label_agreement(classifier, x_samples, y_samples)
    fit_real = gaussian_fit(classifier.embed(x_real))  # fitted once, shared by the three distances

    def fd_to_real(name: str) -> float | None:
        if name not in sets:
            return None
        return frechet_distance(*gaussian_fit(classifier.embed(sets[name])), *fit_real)

    return SampleQuality(
        agreement=agreement["overall"],
        per_class_agreement=agreement["per_class"],
        fd_samples=fd_to_real("x_samples"),  # type: ignore[arg-type]
        fd_reconstructions=fd_to_real("x_reconstructions"),
        fd_real_real=fd_to_real("x_real_other"),
        n_samples=int(x_samples.shape[0]),
        n_reference=int(x_real.shape[0]),
    )
