"""Figures as PNG files: image grids, spectrograms, loss curves and time-frequency precision maps.

Every function draws on its own ``matplotlib.figure.Figure`` with the Agg canvas (never ``pyplot``), so it
works headless, changes no global matplotlib state, leaks no open figures, and returns the written path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from genlib.utils import check_positive

__all__ = [
    "save_image_grid",
    "save_entropy_grid",
    "save_spectrograms",
    "save_loss_curves",
    "save_precision_map",
]


def _numpy(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.abs() if a.is_complex() else a
        return a.float().numpy()
    if isinstance(a, np.ndarray):
        return np.abs(a) if np.iscomplexobj(a) else a.astype(np.float64, copy=False)
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int = 8,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    cell_inches: float = 0.8,
    dpi: int = 100,
) -> Path:
    """A grid of images ``(N, C, H, W)`` (C = 1 or 3, values in [0, 1], clipped) with ``nrow`` per row.

    ``labels`` (one per image: ints, strings, e.g. the class each sample was generated for) are written
    under the images.
    """
    x = _numpy(images, "images")
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images must have shape (N, 1 or 3, H, W) with N >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or Inf")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow <= 0:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    n = x.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels must have one entry per image ({n}), got {len(labels)}")
    # One mosaic drawn by a single imshow: one subplot per image costs seconds for a 10x10 grid.
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    h, w = x.shape[2:]
    pad = max(1, round(0.06 * max(h, w)))
    top = round(0.45 * h) if labels is not None else pad  # room for a label above each image
    mosaic = np.ones((rows * (h + top) + pad, cols * (w + pad) + pad, x.shape[1]))
    x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)
    for i in range(n):
        r, c = divmod(i, cols)
        y0, x0 = r * (h + top) + top, c * (w + pad) + pad
        mosaic[y0 : y0 + h, x0 : x0 + w] = x[i]
    title_in = 0.3 if title else 0.0
    width = cols * cell_inches
    height = width * mosaic.shape[0] / mosaic.shape[1]
    fig = Figure(figsize=(width, height + title_in))
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + title_in)))
    ax.set_axis_off()
    img = mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if labels is not None:
        for i, label in enumerate(labels):
            r, c = divmod(i, cols)
            ax.text(c * (w + pad) + pad + w / 2, r * (h + top) + top - 0.5, str(label), ha="center",
                    va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.05 * title_in / (height + title_in), va="top")
    return _save(fig, path, dpi)


def entropy_grid_order(labels: torch.Tensor, entropy: torch.Tensor, per_class: int = 10) -> torch.Tensor:
    """Row indices for :func:`save_entropy_grid`: per class (increasing), ``per_class`` rows evenly spread
    over the class's entropy ranking, most confident (lowest entropy) first."""
    if labels.shape != entropy.shape or labels.ndim != 1:
        raise ValueError(f"labels and entropy must be (N,) tensors, got {tuple(labels.shape)} and "
                         f"{tuple(entropy.shape)}")
    out = []
    for k in labels.unique().tolist():
        idx = torch.nonzero(labels == k).squeeze(1)
        ranked = idx[torch.argsort(entropy[idx], stable=True)]
        out.append(ranked[torch.linspace(0, len(ranked) - 1, min(per_class, len(ranked))).round().long()])
    return torch.cat(out)


def save_entropy_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    entropy: torch.Tensor,
    path: str | os.PathLike,
    per_class: int = 10,
    dpi: int = 100,
) -> Path:
    """Generated samples sorted by a classifier's entropy: one row per class, ``per_class`` samples evenly
    spread from the most to the least confident, each labelled ``class: entropy``."""
    order = entropy_grid_order(labels.cpu(), entropy.cpu(), per_class)
    names = [f"{int(labels[i])}: {float(entropy[i]):.2f}" for i in order]
    return save_image_grid(
        images[order], path, nrow=min(per_class, len(order)), labels=names, cell_inches=1.0, dpi=dpi,
        title="per class (rows): most to least confident; label = class: entropy (nats)",
    )


def save_spectrograms(
    named_spectrograms: Mapping[str, torch.Tensor | np.ndarray],
    path: str | os.PathLike,
    sr: int,
    hop: int,
    db_range: float = 80.0,
    dpi: int = 100,
) -> Path:
    """Log-magnitude spectrograms side by side, one panel per name, on one shared dB colour scale.

    Each value is a complex STFT or a magnitude, shape ``(F, T)`` with ``F = n_fft // 2 + 1`` (a leading
    batch dimension of 1 is dropped). Levels are dB relative to the loudest bin over all panels, floored at
    ``-db_range``; axes are seconds (``hop / sr`` per frame) and Hz (0 to ``sr / 2``).
    """
    if not isinstance(named_spectrograms, Mapping) or not named_spectrograms:
        raise ValueError("named_spectrograms must be a non-empty mapping name -> (F, T) spectrogram")
    sr = int(sr)
    hop = int(hop)
    if sr <= 0 or hop <= 0:
        raise ValueError(f"sr and hop must be positive, got sr={sr}, hop={hop}")
    db_range = check_positive(db_range, "db_range")
    mags = {}
    for name, s in named_spectrograms.items():
        m = _numpy(s, f"named_spectrograms[{name!r}]")
        m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
        if m.ndim != 2 or min(m.shape) == 0:
            raise ValueError(f"named_spectrograms[{name!r}] must have shape (F, T), got {m.shape}")
        if not np.isfinite(m).all() or (m < 0).any():
            raise ValueError(f"named_spectrograms[{name!r}] must be complex or finite magnitudes >= 0")
        mags[name] = m
    ref = max(float(m.max()) for m in mags.values()) or 1.0
    fig = Figure(figsize=(4.0 * len(mags) + 1.0, 3.2), layout="constrained")
    axes = fig.subplots(1, len(mags), squeeze=False)[0]
    im = None
    for ax, (name, m) in zip(axes, mags.items()):
        # librosa.amplitude_to_db's formula, written out: importing librosa costs seconds per process
        db = 20.0 * np.log10(np.maximum(m / ref, 10.0 ** (-db_range / 20.0)))
        extent = (0.0, m.shape[1] * hop / sr, 0.0, sr / 2)
        im = ax.imshow(
            db, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=-db_range, vmax=0.0
        )
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (Hz)")
    fig.colorbar(im, ax=list(axes), label="dB", fraction=0.03, pad=0.01)
    return _save(fig, path, dpi)


def save_loss_curves(
    history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    keys: Sequence[str] | None = None,
    logy: bool = False,
    dpi: int = 100,
) -> Path:
    """One panel per numeric series of ``history`` against ``epoch`` / ``step`` when present.

    ``history`` is ``{name: values}`` (as :func:`genlib.train.train_classifier` returns) or a list of
    records (as :class:`genlib.train.MetricsLogger` writes). ``keys`` picks the series (default: all
    numeric ones except the x axis and ``seconds``); ``logy`` uses a log scale where values are positive.
    """
    if isinstance(history, Mapping):
        series = {k: list(v) for k, v in history.items()}
    elif isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        names = list(dict.fromkeys(k for r in history for k in r))
        series = {k: [r.get(k, math.nan) for r in history] for k in names}
    else:
        raise ValueError("history must be a mapping name -> values or a list of records (dicts)")
    xkey = next((k for k in ("step", "epoch") if k in series), None)
    numeric = {
        k: np.asarray(v, dtype=np.float64)
        for k, v in series.items()
        if v and all(isinstance(e, (int, float, np.number)) and not isinstance(e, bool) for e in v)
    }
    if keys is None:
        keys = [k for k in numeric if k not in (xkey, "seconds")]
    missing = [k for k in keys if k not in numeric]
    if missing:
        raise ValueError(f"keys {missing} are not numeric series of history; it has {sorted(numeric)}")
    if not keys:
        raise ValueError("history has no numeric series to plot")
    fig = Figure(figsize=(3.6 * len(keys), 2.8), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, k in zip(axes, keys):
        y = numeric[k]
        x = numeric[xkey] if xkey in numeric and len(numeric[xkey]) == len(y) else np.arange(1, len(y) + 1)
        ax.plot(x, y, marker="o" if len(y) <= 30 else None, markersize=3)
        if logy and np.nanmin(y) > 0:
            ax.set_yscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(xkey or "index")
        ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def save_precision_map(
    precision: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    sr: int | None = None,
    hop: int | None = None,
    title: str | None = None,
    log: bool = True,
    dpi: int = 100,
) -> Path:
    """A time-frequency heat map ``(F, T)`` of positive values (e.g. a likelihood's precision 1/sigma^2 per
    STFT bin, or a diagonal preconditioner), on a log colour scale by default.

    With ``sr`` and ``hop`` the axes are seconds and Hz (bins ``0 .. sr / 2``); otherwise frame and bin
    indices.
    """
    p = _numpy(precision, "precision")
    p = p[0] if p.ndim == 3 and p.shape[0] == 1 else p
    if p.ndim != 2 or min(p.shape) == 0:
        raise ValueError(f"precision must have shape (F, T), got {p.shape}")
    if not np.isfinite(p).all() or (log and (p <= 0).any()):
        raise ValueError("precision must be finite" + (" and > 0 for a log colour scale" if log else ""))
    if (sr is None) != (hop is None):
        raise ValueError("give both sr and hop (for axes in seconds and Hz) or neither")
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    if sr is not None:
        extent = (0.0, p.shape[1] * hop / sr, 0.0, sr / 2)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
    else:
        extent = (-0.5, p.shape[1] - 0.5, -0.5, p.shape[0] - 0.5)
        ax.set_xlabel("frame")
        ax.set_ylabel("frequency bin")
    norm = LogNorm(vmin=float(p.min()), vmax=float(p.max())) if log and p.max() > p.min() else None
    im = ax.imshow(p, origin="lower", aspect="auto", extent=extent, cmap="viridis", norm=norm)
    fig.colorbar(im, ax=ax, label="precision")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi)
