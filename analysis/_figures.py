r"""What every figure of ``analysis/`` shares: the style, one colour and name per method, saving, bands.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display needed) inside
:data:`STYLE`: the same colour and name for a method in every figure, units on every axis (nats, reward
evaluations, seconds), and bands showing the spread over seeds (min to max). Each experiment's ``plot(out)``
reads only the files its ``run`` saved (:func:`read_csv`, :func:`read_json`) and writes PNGs with :func:`save`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # ArviZ's plots may reach for pyplot; never open a window

import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from bayes_klrl.methods import METHODS  # noqa: E402
from bayes_klrl.storage import atomic_write  # noqa: E402

__all__ = [
    "COLORS",
    "STYLE",
    "band",
    "color",
    "figure",
    "label",
    "log_y",
    "read_csv",
    "read_json",
    "save",
    "seeds_note",
    "style",
]

#: rc settings shared by every figure
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "legend.framealpha": 0.85,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "figure.titlesize": 12,
}

#: one colour per method (and per sampler, kernel and reference line), the same in every figure
COLORS = {
    "exact": "#222222",
    "svi": "#1f77b4",
    "rl": "#ff7f0e",
    "rl_no_kl": "#d62728",
    "dpg": "#2ca02c",
    "dpg_batch": "#98df8a",
    "is": "#9467bd",
    "mcmc": "#8c564b",
    "gibbs": "#8c564b",
    "imh": "#e377c2",
    "prior": "#7f7f7f",
    "grpo": "#17becf",
    "grpo_corr": "#bcbd22",
    "drgrpo": "#6a3d9a",
}
#: colours for names :data:`COLORS` does not know (a method registered later), taken in turn
FALLBACK_COLORS = ("#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#c5b0d5")

#: legend names of what is not a trained method of :data:`bayes_klrl.methods.METHODS`
NAMES = {
    "gibbs": "single-site Gibbs",
    "imh": "independence MH, prior proposal",
    "prior": "the prior π0",
}


def color(name: str) -> str:
    """The colour of method (or sampler) ``name``; an unknown name gets a fallback colour fixed by its spelling."""
    if name in COLORS:
        return COLORS[name]
    return FALLBACK_COLORS[sum(map(ord, name)) % len(FALLBACK_COLORS)]


def label(name: str) -> str:
    """The legend name of ``name``: the registry's :attr:`~bayes_klrl.methods.TrainedMethod.label` for a method,
    else :data:`NAMES`, else the name itself."""
    method = METHODS.get(name)
    if method is not None and getattr(method, "label", None):
        return method.label
    return NAMES.get(name, name)


def style():
    """Context manager drawing in :data:`STYLE`."""
    return matplotlib.rc_context(STYLE)


def figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs) -> tuple[Figure, object]:
    """A constrained-layout figure on the Agg canvas and its ``(nrows, ncols)`` array of axes."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a 256-colour PNG (about a quarter of the size of the RGBA file, same look), atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    return atomic_write(Path(path), lambda tmp: image.save(tmp, format="png", optimize=True))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_csv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def band(ax, frame: pd.DataFrame, x: str, y: str, *, color: str, label: str, by: str = "step", **line) -> None:
    """Mean of ``y`` over seeds at each ``by`` value (x: the mean of ``x`` there), with a min–max band."""
    g = frame.groupby(by)
    xs, mean, low, high = g[x].mean(), g[y].mean(), g[y].min(), g[y].max()
    ax.fill_between(xs.to_numpy(), low.to_numpy(), high.to_numpy(), color=color, alpha=0.18, linewidth=0)
    ax.plot(xs.to_numpy(), mean.to_numpy(), color=color, label=label, **line)


def log_y(ax) -> None:
    """Log scale on y with plain numbers (0.1, 0.3, 2) rather than powers of ten; call after plotting."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if high / low < 30:  # less than ~1.5 decades: label 2, 3 and 5 times the powers of ten too

        def minor(v, _):
            mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
            return f"{v:g}" if mantissa in (2, 3, 5) else ""

        ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def seeds_note(frame: pd.DataFrame) -> str:
    n = frame["seed"].nunique()
    return f"line: mean over {n} seed{'s' if n != 1 else ''}, band: min–max"
