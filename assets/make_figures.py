"""The README's figures, each drawn from a real run of a recipe's ``--quick`` config.

For every figure the script runs its recipe (``python -m recipes.NAME --quick ... --out RUNS/NAME``), or
reuses ``RUNS/NAME`` when an earlier call of this script finished the same command there, then reads what
the run wrote (``results.json``, its figures, its saved models) and draws one small PNG into ``assets/``:

    samples_mnist   class-conditional MNIST-4k draws of ``svhn_semisup --quick``, one row per class,
                    unfiltered, titled with the reference classifier's agreement from its results.json
    spectrograms    one held-out VCTK utterance: input / Gamma FC / Itakura-Saito FC reconstruction
                    (``vctk_resynthesis --quick``, the rows' saved models)
    delayed_xor     the delayed-XOR success table of ``delayed_xor --quick`` as a plot, with its loss curves
    psgd_vs_adam    training-loss curves of one VAE under Adam and PSGD-Kron (``vae_optimizers --quick``)

The recipes' ``--quick`` budgets are the only ones used: all four figures take about ten minutes on a 2-core
CPU (``svhn_semisup`` most of it), and seconds when the runs are already there.

    python -m assets.make_figures                          # every figure
    python -m assets.make_figures --only spectrograms      # one (or a few) of them
    python assets/make_figures.py --runs /tmp/figs --rerun # run every recipe again, elsewhere
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent
REPO = ASSETS.parent
DPI = 100
MAX_BYTES = 300_000  # a README image budget: the PNGs live in git
STAMP = "make_figures.json"  # written into a run folder once its command has finished there

if str(REPO) not in sys.path:  # `python assets/make_figures.py` puts assets/, not the repository, on the path
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class FigureSpec:
    """One README figure: the recipe run it is drawn from and how it is drawn."""

    name: str  # the PNG's stem in assets/ and the name --only takes
    recipe: str  # recipes.<recipe>
    args: tuple[str, ...]  # the recipe's arguments besides --out
    outputs: tuple[str, ...]  # files of the run folder the drawing reads
    draw: Callable[[FigureSpec, Path, Path], Path]  # (spec, run folder, png) -> png
    caption: str  # the README's alt text

    @property
    def command(self) -> str:
        """The recipe command the figure comes from, as the README and the figure's title show it."""
        return shlex.join(["python", "-m", f"recipes.{self.recipe}", *self.args])


# ------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a palette PNG: 256 colours keep these plots intact at a third of the RGB size
    (octree quantization: median cut spends the palette on text grey and bands the colour maps)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        print(f"warning: {path} is {size / 1e3:.0f} kB, over the {MAX_BYTES / 1e3:.0f} kB budget")
    return path


def _wrap(notes: Sequence[str], width_in: float) -> list[str]:
    """Note lines wrapped to a figure ``width_in`` inches wide (8 pt DejaVu Sans: ~16 characters an inch)."""
    return [line for note in notes for line in textwrap.wrap(note, width=max(20, int(15.5 * width_in)))]


def _header(fig: Any, title: str, notes: Sequence[str], command: str) -> None:
    """Title, note lines and the making command stacked downwards from the top of ``fig``."""
    height_in = fig.get_figheight()
    lines = [(title, 10, "bold", "sans-serif"),
             *((n, 8, "normal", "sans-serif") for n in _wrap(notes, fig.get_figwidth())),
             (f"$ {command}", 8, "normal", "monospace")]
    y = 1.0 - 0.06 / height_in
    for text, size, weight, family in lines:
        fig.text(0.01, y, text, ha="left", va="top", fontsize=size, fontweight=weight, family=family)
        y -= (size + 4) / 72 / height_in  # one line of that font size, in figure fractions


def _header_inches(notes: Sequence[str], width_in: float) -> float:
    """Height the :func:`_header` lines need on a figure ``width_in`` inches wide."""
    return ((10 + 4) + len(_wrap(notes, width_in)) * (8 + 4) + (8 + 4)) / 72 + 0.12


def _framed(image_png: Path, out_png: Path, title: str, notes: Sequence[str], command: str) -> Path:
    """A PNG a recipe (or :mod:`genlib.viz`) drew, unchanged at its own pixel size, under a header."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    img = imread(image_png)
    h, w = img.shape[:2]
    width_in, img_in = w / DPI, h / DPI
    head = _header_inches(notes, width_in)
    fig = Figure(figsize=(width_in, img_in + head))
    ax = fig.add_axes((0.0, 0.0, 1.0, img_in / (img_in + head)))
    ax.set_axis_off()
    ax.imshow(img, interpolation="nearest")
    _header(fig, title, notes, command)
    return _save(fig, out_png)


def _plot_figure(width_in: float, plot_in: float, notes: Sequence[str], n_panels: int) -> tuple[Any, list]:
    """A figure with ``n_panels`` side by side under room for a :func:`_header`."""
    from matplotlib.figure import Figure

    head = _header_inches(notes, width_in)
    fig = Figure(figsize=(width_in, plot_in + head))
    bottom = 0.55 / (plot_in + head)  # room for the x labels
    fig.subplots_adjust(left=0.95 / width_in, right=0.98, bottom=bottom,
                        top=plot_in / (plot_in + head) - 0.03, wspace=0.35)
    return fig, list(fig.subplots(1, n_panels, squeeze=False)[0])


# ------------------------------------------------------------------------------------------- figures
def draw_samples(spec: FigureSpec, run: Path, png: Path) -> Path:
    """The run's own ``samples.png`` (first draws of each class, unfiltered) under the judge's verdict."""
    res = _read_json(run / "results.json")
    q, cfg = res["sample_quality"]["unfiltered"], res["config"]
    per_class = "  ".join(f"{k}: {100 * a:.0f}%" for k, a in enumerate(q["per_class_agreement"]))
    notes = [
        f"Guided Langevin on p(z) p(y|z)^{cfg['generation_guidance']:g} at T = "
        f"{cfg['generation_temperature']:g}, {cfg['generation_steps']} steps of "
        f"{cfg['generation_step_size']:g}"
        f". Trained on {res['n_labeled']} labels + {res['n_unlabeled']} unlabelled images; latent "
        f"classifier test accuracy {100 * res['latent_classifier_accuracy']:.1f}%.",
        f"Judge: a CNN trained on real labels the generator never saw. Per class: {per_class}",
    ]
    title = (f"MNIST-4k class-conditional draws, unfiltered: the judge agrees with "
             f"{100 * q['agreement']:.1f}% of {q['n_samples']}")
    return _framed(run / "samples.png", png, title, notes, spec.command)


def draw_spectrograms(spec: FigureSpec, run: Path, png: Path) -> Path:
    """Input / Gamma / Itakura-Saito log spectrograms of the first held-out test utterance, decoded by the
    rows' saved models as the recipe decodes them (posterior mean magnitude)."""
    import recipes.vctk_resynthesis as vr
    from genlib.data.speech import load_audio
    from genlib.data.stft import HOP_LENGTH, stft
    from genlib.models import VAE
    from genlib.viz import save_spectrograms

    cfg = vr.parse_config([*spec.args, "--out", str(run)])  # the run's own data choice and test set
    _, test = vr.load_corpus(cfg)
    utt = vr.test_utterances(cfg, test)[0]
    x = stft(load_audio(utt.path))
    panels = {f"input: {utt.speaker} {utt.path.stem} (held out)": x}
    scores = []
    for row, label in (("gamma-fc", "Gamma"), ("is-fc", "Itakura-Saito")):
        vae = VAE.load(run / row / "vae.pt").eval()
        panels[f"{label} FC reconstruction"] = vr.decode_utterance(vae, vr.ROWS[row], x)["magnitude"]
        res = _read_json(run / row / "results.json")
        m = res["results"][row]
        scores.append(f"{label} {m['pesq_wb_gt_phase']:.2f}")
    n_test = res["test_data"]["n_utterances"]
    trained = res["config"]
    notes = [
        f"{trained['epochs']} epochs of {trained['optimizer']} on every {trained['every']}th frame of "
        f"{', '.join(res['train_data']['speakers'])}; latent {trained['latent_dim']} per 64 ms frame.",
        f"PESQ-wb with the true phase, mean over {n_test} held-out utterances: {', '.join(scores)}.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        inner = save_spectrograms(panels, Path(tmp) / "spectrograms.png", sr=vr.SR, hop=HOP_LENGTH, dpi=DPI)
        title = "VCTK re-synthesis: input / Gamma / Itakura-Saito decoder (log magnitude, same dB scale)"
        return _framed(inner, png, title, notes, spec.command)


def draw_delayed_xor(spec: FigureSpec, run: Path, png: Path) -> Path:
    """The study's summary (runs solved, median iterations to solve) as bars, beside every run's loss."""
    from matplotlib.ticker import NullFormatter

    data = _read_json(run / "results.json")
    cfg, rows, runs = data["config"], data["summary"], data["runs"]
    many = len({(r["arch"], r["length"]) for r in rows}) > 1
    labels = [r["optimizer"] + (f"\n{r['arch'].upper()} L={r['length']}" if many else "") for r in rows]
    colors = {o: f"C{i}" for i, o in enumerate(dict.fromkeys(r["optimizer"] for r in rows))}
    notes = [f"Solved: the running mean of the last {cfg['solved_window']} batch losses falls below "
             f"{cfg['solved_loss']:g} within {cfg['max_iters']} iterations; fresh batches of "
             f"{cfg['batch_size']}, {cfg['hidden']} hidden units, seeds {cfg['seeds']}."]
    fig, (ax_c, ax_s, ax_i) = _plot_figure(12.0, 3.0, notes, 3)
    for r in runs:
        name = r["optimizer"] if r["rank"] is None else f"{r['optimizer']}(r={r['rank']})"
        xs = [cfg["curve_every"] * (i + 1) for i in range(len(r["curve"]))]
        ax_c.semilogy(xs, r["curve"], lw=0.8, color=colors.get(name, "k"),
                      label=f"{name} {r['arch'].upper()} L={r['length']} seed {r['seed']}")
    ax_c.axhline(cfg["solved_loss"], color="k", ls=":", lw=0.8)
    ax_c.yaxis.set_minor_formatter(NullFormatter())  # decades only: "6x10^-1" labels crowd the axis
    ax_c.set_ylim(top=1.0)
    ax_c.set(xlabel="iteration", ylabel="logistic loss", title="every run's training loss")
    ax_c.legend(fontsize=6)
    pos = list(range(len(rows)))
    bar_colors = [colors[r["optimizer"]] for r in rows]
    ax_s.bar(pos, [r["success_rate"] for r in rows], color=bar_colors)
    for p, r in zip(pos, rows):
        solved = round(r["success_rate"] * r["runs"])
        ax_s.text(p, r["success_rate"] + 0.02, f"{solved}/{r['runs']}", ha="center", fontsize=8)
    ax_s.set(ylim=(0, 1.15), ylabel="success rate", title="runs solved")
    meds = [r["median_iters_solved"] for r in rows]
    ax_i.bar(pos, [m or 0 for m in meds], color=bar_colors)
    for p, m in zip(pos, meds):
        ax_i.text(p, m or 0, "none solved" if m is None else str(m), ha="center", va="bottom", fontsize=8)
    ax_i.set(ylabel="iterations", title="median iterations to solve (solved runs)")
    ax_i.set_ylim(0, 1.15 * max([m or 0 for m in meds] + [1]))
    for ax in (ax_s, ax_i):
        ax.set_xticks(pos, labels, fontsize=8)
    for ax in (ax_c, ax_s, ax_i):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    lengths = ", ".join(map(str, cfg["lengths"]))
    title = f"Delayed XOR, sequence length {lengths}: {', '.join(colors)}"
    _header(fig, title, notes, spec.command)
    return _save(fig, png)


def draw_psgd_vs_adam(spec: FigureSpec, run: Path, png: Path) -> Path:
    """Training loss per step of each optimizer, with its held-out ELBO and log p(x) in the legend."""
    data = _read_json(run / "results.json")
    cfg, results = data["config"], data["results"]
    missing = [n for n, r in results.items() if "history" not in r]
    if missing:
        raise ValueError(f"{run / 'results.json'} has no loss curve for {missing} (written by an older "
                         "vae_optimizers): run again with --rerun")
    where = "scikit-learn's 8x8 digits" if cfg["data_dir"] is None else "MNIST-4k"
    notes = [f"Bernoulli MLP VAE (latent {cfg['latent_dim']}, hidden {cfg['hidden']}) on {where}, batch "
             f"{cfg['batch_size']}, same initial weights and batches; PSGD in gradient-whitening mode."]
    fig, (ax,) = _plot_figure(7.0, 3.2, notes, 1)
    for name, r in results.items():
        h = r["history"]
        ax.plot(h["step"], h["train_loss"], marker="o", ms=3,
                label=f"{name}: held-out ELBO {r['test_elbo']:.2f}, log p(x) {r['test_log_px']:.2f} nats "
                      f"({r['seconds']:.1f} s)")
    ax.set(xlabel="step", ylabel="training loss (-ELBO, nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    title = f"PSGD vs Adam: one VAE, {cfg['steps']} steps each"
    _header(fig, title, notes, spec.command)
    return _save(fig, png)


FIGURES: dict[str, FigureSpec] = {s.name: s for s in (
    FigureSpec("samples_mnist", "svhn_semisup", ("--quick", "--no-progress"), ("results.json", "samples.png"),
               draw_samples, "class-conditional MNIST-4k draws, one row per class"),
    FigureSpec("spectrograms", "vctk_resynthesis", ("--quick",),
               ("gamma-fc/results.json", "gamma-fc/vae.pt", "is-fc/results.json", "is-fc/vae.pt"),
               draw_spectrograms, "input, Gamma and Itakura-Saito spectrograms of a held-out utterance"),
    FigureSpec("delayed_xor", "delayed_xor", ("--quick",), ("results.json",), draw_delayed_xor,
               "delayed XOR: runs solved and iterations to solve per optimizer"),
    FigureSpec("psgd_vs_adam", "vae_optimizers", ("--quick",), ("results.json",), draw_psgd_vs_adam,
               "VAE training loss under Adam and PSGD-Kron"),
)}


# ------------------------------------------------------------------------------------------- running
def ensure_run(spec: FigureSpec, runs: Path, rerun: bool = False, allow_run: bool = True) -> Path:
    """The run folder of ``spec``'s recipe: reused when this script finished the same command there before
    (its stamp) and every file the figure reads is present; otherwise the recipe runs (continuing from its
    own checkpoints where it keeps them) and the folder is stamped."""
    folder = runs / spec.recipe
    stamp = {"recipe": spec.recipe, "args": list(spec.args)}
    stamp_path = folder / STAMP
    done = (stamp_path.is_file() and _read_json(stamp_path) == stamp
            and all((folder / f).is_file() for f in spec.outputs))
    if done and not rerun:
        print(f"{spec.name}: reusing {folder} ({spec.command})")
        return folder
    if not allow_run:
        raise FileNotFoundError(f"{spec.name}: no finished run of `{spec.command}` in {folder} (--no-run)")
    argv = [sys.executable, "-m", f"recipes.{spec.recipe}", *spec.args, "--out", str(folder)]
    print(f"{spec.name}: running {shlex.join(argv[1:])}", flush=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    subprocess.run(argv, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": path})
    stamp_path.write_text(json.dumps(stamp) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Make the figures asked for; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "figures",
                   help="folder of the recipe runs, one sub-folder per recipe (default: runs/figures)")
    p.add_argument("--only", nargs="+", choices=tuple(FIGURES), metavar="NAME",
                   help=f"make only these figures: {', '.join(FIGURES)}")
    p.add_argument("--out", type=Path, default=ASSETS, help="where the PNGs go (default: assets/)")
    p.add_argument("--rerun", action="store_true", help="run every recipe again even where a run is saved")
    p.add_argument("--no-run", action="store_true",
                   help="run nothing: draw from saved runs only (fails when one is missing)")
    args = p.parse_args(argv)
    if args.rerun and args.no_run:
        p.error("--rerun and --no-run contradict each other")
    for name in args.only or FIGURES:
        spec = FIGURES[name]
        run = ensure_run(spec, args.runs.resolve(), rerun=args.rerun, allow_run=not args.no_run)
        png = spec.draw(spec, run, args.out / f"{name}.png")
        print(f"{name}: wrote {png} ({png.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
