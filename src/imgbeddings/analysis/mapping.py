"""A 2-D map of an output: UMAP of the vectors, drawn as a PNG of thumbnails or coloured points.

>>> res = make_map(VectorSet.from_output("out/"), "map.png")            # thumbnails + clusters
>>> res = make_map(vs, "map.png", color_by="folder", thumbnails=False)  # points by parent folder
>>> res.xy                 # float32 (n, 2); res.paths[i] is at res.xy[i]
>>> write_coords(res, "map.parquet")

The layout is UMAP (umap-learn; cosine metric, ``n_neighbors=15``, ``min_dist=0.1``) of the
:func:`~imgbeddings.analysis.reduce.centered_unit` vectors' first 64 principal components,
with a fixed ``random_state``: the same vectors and seed give the same coordinates. umap-learn
runs single-threaded when given a seed. The PCA step drops noise spread over the minor
directions: on 10,000 generated 768-d vectors in 8 overlapping classes it raised the share of
points whose 5 map neighbours mostly share their class from 0.75 to 0.97, at the same speed
(``benchmarks/bench_map.py --quality``).

Large outputs are sampled: at most ``sample`` points (10,000 by default) drawn with ``seed``.
Thumbnails (96 px for up to ~700 points, shrinking to 40 px at 4,000 or more) are drawn for
a spread-out subset of at most ``max_thumbnails`` points: the plot is cut into a grid, and the
point nearest each occupied cell's centre gets its image, so dense regions do not hide sparse
ones. The grid is the finest whose occupied cells are at most ``max_thumbnails``, with cells
between 3/4 and 1/2 of a thumbnail wide: where points are spread out, neighbours overlap by at
most a quarter; where they pile up in tight clusters, thumbnails pile up too (so a clustered
collection still shows many images) but stay at least half a thumbnail apart. The picture
takes the layout's shape (1800 px on its long side, the other side 900 to 1800 px).
Every sampled point is drawn as a dot under them, coloured by its group.

The figure is drawn with matplotlib's Agg canvas directly (no pyplot, no display; the
program's own matplotlib backend is left alone).
"""

from __future__ import annotations

import html
import math
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import OptionError
from . import extras
from .reduce import centered_unit, pca_reduce, require_vectors
from .vectors import VectorSet

ColorBy = Literal["cluster", "label", "folder"]

#: Most points drawn (and laid out) unless ``sample`` says otherwise.
DEFAULT_SAMPLE = 10_000
#: Most thumbnails drawn.
DEFAULT_THUMBNAILS = 1500
#: Fewest vectors a map is made of.
MAP_MINIMUM = 4
_FIGURE_INCHES = 12
_DPI = 150
_GROUP_COLOURS = 18  # groups with a colour of their own (tab20 without its greys); the rest grey
_LEGEND_COLUMNS = 6
_GREY = "#b0b0b0"
_CELLS = (0.75, 0.5)  # grid cell width as a share of the thumbnail side: coarsest, finest
_ASPECTS = (0.5, 2.0)  # the map's height / width is kept within these


def umap_embed(
    x: np.ndarray, n_components: int = 2, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> np.ndarray:
    """UMAP of the rows of ``x`` (cosine metric, ``random_state=seed``) to float32 (n, n_components).
    Small inputs get ``n_neighbors`` lowered to n - 1 and a random initialisation."""
    umap = extras.umap()
    n = len(x)
    init = "spectral" if n > n_components + 2 else "random"
    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=min_dist,
        metric="cosine",
        init=init,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


@dataclass
class MapResult:
    """Where each mapped image landed: ``paths[i]`` at ``xy[i]``, row ``rows[i]`` of the
    vectors; ``groups[i]`` its colour group (None when uncoloured). ``total`` is how many
    vectors there were (more than ``len(paths)`` when sampled with ``seed``)."""

    paths: list[str]
    xy: np.ndarray
    rows: np.ndarray
    groups: list[str] | None
    total: int
    seed: int
    color_by: str | None = None
    thumbnails: int = 0
    png: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def sampled(self) -> bool:
        """True when only a sample of the vectors was mapped."""
        return len(self.paths) < self.total


def sample_rows(n: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted rows of a uniform sample of ``sample`` out of ``n`` (all rows if it is None or >= n)."""
    if sample is None or sample >= n:
        return np.arange(n)
    if sample < MAP_MINIMUM:
        raise OptionError(f"sample must be at least {MAP_MINIMUM}, got {sample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def _groups(
    vs: VectorSet, rows: np.ndarray, color_by: ColorBy | None, labels: Any, k: int, seed: int
) -> list[str] | None:
    from .cluster import ClusterResult, cluster, labels_for

    paths = [vs.paths[i] for i in rows]
    if color_by is None:
        return None
    if color_by == "folder":
        return [os.path.basename(os.path.dirname(p)) or "/" for p in paths]
    if color_by not in ("cluster", "label"):
        raise OptionError(f"color_by must be 'cluster', 'label', 'folder' or None, not {color_by!r}")
    if labels is None:
        if color_by == "label":
            raise OptionError(
                "color_by='label' needs labels (a sequence, a path -> label mapping, or clusters)"
            )
        sub = VectorSet(paths, vs.vectors[rows], vs.manifest)
        # at least ~5 points a cluster: 8 images in 8 clusters of one would colour nothing
        return labels_for(cluster(sub, k=max(1, min(k, len(sub) // 5)), seed=seed), paths)
    if isinstance(labels, ClusterResult):
        return labels_for(labels, paths)
    if isinstance(labels, Mapping):
        return [str(labels.get(p, "")) for p in paths]
    if isinstance(labels, Sequence) or isinstance(labels, np.ndarray):
        if len(labels) != len(vs):
            raise OptionError(f"got {len(labels)} labels for {len(vs)} vectors")
        return [str(labels[i]) for i in rows]
    raise OptionError(f"labels must be a sequence, a mapping or a ClusterResult, not {type(labels).__name__}")


def palette(groups: Sequence[str]) -> dict[str, str]:
    """A colour (hex) for each group: the 18 largest get distinct colours (matplotlib's tab20
    without its two greys, strong shades first); the rest, "noise" and unlabelled points grey."""
    extras.matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab = colormaps["tab20"].colors
    colours = [to_hex(c) for c in tab[0::2] + tab[1::2]]
    colours.remove("#7f7f7f")  # tab20's own greys would read as "no group"
    colours.remove("#c7c7c7")
    counts = Counter(g for g in groups if g not in ("", "noise"))
    ranked = sorted(counts, key=lambda g: (-counts[g], g))
    out = {g: colours[i] for i, g in enumerate(ranked[: len(colours)])}
    return {g: out.get(g, _GREY) for g in set(groups)}


def spread_subset(xy: np.ndarray, grid: int, cap: int, seed: int = 0) -> np.ndarray:
    """Rows of ``xy`` spread over the plot: a ``grid`` x ``grid`` grid over the (square)
    bounding box, and in each occupied cell the point nearest the cell's centre; when more than
    ``cap`` cells are occupied, a random ``cap`` of them (drawn with ``seed``). Sorted."""
    if cap <= 0 or len(xy) == 0:
        return np.empty(0, dtype=np.int64)
    lo, span = _square_box(xy)
    key = _cells(xy, grid)
    centres = lo + (np.stack([key // grid, key % grid], axis=1) + 0.5) * span / grid
    dist = np.sum((xy - centres) ** 2, axis=1)
    order = np.lexsort((dist, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    chosen = order[first]
    if len(chosen) > cap:
        chosen = np.random.default_rng(seed).choice(chosen, size=cap, replace=False)
    return np.sort(chosen)


def _cells(xy: np.ndarray, grid: int) -> np.ndarray:
    """Cell number of each point in a ``grid`` x ``grid`` grid over the square bounding box."""
    lo, span = _square_box(xy)
    cells = np.minimum(((xy - lo) / span * grid).astype(np.int64), grid - 1)
    return cells[:, 0] * grid + cells[:, 1]


def choose_grid(xy: np.ndarray, coarsest: int, finest: int, cap: int) -> int:
    """The finest grid from ``coarsest`` to ``finest`` cells a side whose occupied cells number
    at most ``cap`` (``coarsest`` if even that has more)."""
    best = coarsest
    for grid in range(coarsest + 1, finest + 1):
        if len(np.unique(_cells(xy, grid))) > cap:
            break
        best = grid
    return best


def _plot_box(xy: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits around the points with a 4% margin, widened where needed so that
    height / width stays within ``_ASPECTS``."""
    lo, hi = xy.min(axis=0).astype(np.float64), xy.max(axis=0).astype(np.float64)
    margin = 0.04 * float(max(hi - lo)) or 1.0
    lo, hi = lo - margin, hi + margin
    width, height = hi - lo
    low, high = _ASPECTS
    if height < low * width:
        grow = (low * width - height) / 2
        lo[1], hi[1] = lo[1] - grow, hi[1] + grow
    elif height > high * width:
        grow = (height / high - width) / 2
        lo[0], hi[0] = lo[0] - grow, hi[0] + grow
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def _square_box(xy: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float(max(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    return centre - span / 2, span


def make_map(
    vs: VectorSet,
    out_png: str | os.PathLike[str],
    *,
    color_by: ColorBy | None = "cluster",
    labels: Any = None,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int = 0,
    thumbnails: bool = True,
    max_thumbnails: int = DEFAULT_THUMBNAILS,
    thumb_px: int | None = None,
    k: int = 8,
    pca_dims: int | None = 64,
    title: str | None = None,
    coords_out: str | os.PathLike[str] | None = None,
    html_out: str | os.PathLike[str] | None = None,
) -> MapResult:
    """Lay ``vs`` out in 2-D with UMAP and draw it to ``out_png``; returns the coordinates.

    Args:
        color_by: colour points (and thumbnail frames) by ``"cluster"`` (``labels`` if it is a
            :class:`~imgbeddings.analysis.cluster.ClusterResult`, else k-means with ``k``
            clusters on the mapped vectors; at most one per 5 points), ``"label"`` (``labels``:
            one per vector, or a path -> label mapping), ``"folder"`` (each image's parent
            folder name), or None.
        sample: most points mapped (a uniform sample drawn with ``seed``); None maps all.
        seed: sample, PCA, UMAP and k-means random state.
        pca_dims: UMAP runs on the first ``pca_dims`` principal components (None: on the
            vectors themselves; see :func:`~imgbeddings.analysis.reduce.pca_reduce`).
        thumbnails: draw images (decoded from their paths; ``thumb_px`` pixels, by default
            from 96 for a few hundred points to 40 from 4,000) at a spread-out subset of at
            most ``max_thumbnails`` points; unreadable images are left as dots.
        coords_out: also write the coordinates as Parquet (:func:`write_coords`).
        html_out: also write a standalone HTML page (inline SVG, no scripts or network): one
            dot per point, its path shown on hover.
    """
    require_vectors(vs, MAP_MINIMUM, "make a map")
    rows = sample_rows(len(vs), sample, seed)
    groups = _groups(vs, rows, color_by, labels, k, seed)
    prepared = pca_reduce(centered_unit(np.asarray(vs.vectors)[rows]), pca_dims, seed=seed)
    xy = umap_embed(prepared, 2, seed=seed)
    result = MapResult([vs.paths[i] for i in rows], xy, rows, groups, len(vs), seed, color_by)
    result.thumbnails = draw_map(
        result, out_png, thumbnails=thumbnails, max_thumbnails=max_thumbnails, thumb_px=thumb_px, title=title
    )
    result.png = Path(out_png)
    if coords_out is not None:
        write_coords(result, coords_out)
    if html_out is not None:
        write_html(result, html_out, title=title)
    return result


def _describe(result: MapResult) -> str:
    shown = (
        f"{len(result):,} images"
        if not result.sampled
        else f"{len(result):,} of {result.total:,} images (sample, seed {result.seed})"
    )
    return f"{shown} · UMAP, cosine, seed {result.seed}"


def _atomic_save(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def draw_map(
    result: MapResult,
    out_png: str | os.PathLike[str],
    *,
    thumbnails: bool = True,
    max_thumbnails: int = DEFAULT_THUMBNAILS,
    thumb_px: int | None = None,
    title: str | None = None,
) -> int:
    """Draw ``result`` to ``out_png`` (a PNG 1800 px on its long side, shaped like the layout);
    returns how many thumbnails were drawn."""
    extras.matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xy = result.xy
    groups = result.groups or [""] * len(result)
    colours = palette(groups)
    counts = Counter(groups)
    named = [g for g in sorted(counts, key=lambda g: (-counts[g], g)) if colours[g] != _GREY]
    grey = sum(n for g, n in counts.items() if colours[g] == _GREY)
    legend_rows = math.ceil((len(named) + (grey > 0)) / _LEGEND_COLUMNS) if result.groups else 0
    (x0, x1), (y0, y1) = _plot_box(xy)
    aspect = (y1 - y0) / (x1 - x0)  # the figure takes the layout's shape: no empty bands
    edge, header = 0.1, 0.35 + 0.2 * legend_rows  # inches: around the plot; above it, title and legend
    if aspect <= 1:
        width = _FIGURE_INCHES - 2 * edge
        height = width * aspect
    else:
        height = _FIGURE_INCHES - 2 * edge - header
        width = height / aspect
    fig_w, fig_h = width + 2 * edge, height + 2 * edge + header
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((edge / fig_w, edge / fig_h, width / fig_w, height / fig_h))
    ax.set_axis_off()
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    size = max(2.0, min(40.0, 20_000 / len(result)))
    point_colours = [colours[g] for g in groups] if result.groups else "#4a6fa5"
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=point_colours, linewidths=0, alpha=0.8, rasterized=True)
    fig.suptitle(title or _describe(result), fontsize=11, y=1 - 0.08 / fig_h, va="top")
    drawn = 0
    if thumbnails:
        drawn = _draw_thumbnails(ax, result, groups, colours, max_thumbnails, thumb_px)
    if legend_rows:  # in the header, above the plot: it never covers points
        prefix = "cluster " if result.color_by == "cluster" else ""
        handles = [
            Line2D([], [], marker="o", linestyle="", color=colours[g], label=f"{prefix}{g} ({counts[g]:,})")
            for g in named
        ]
        if grey:
            rest = "noise, unlabelled, other" if len(named) == _GROUP_COLOURS else "noise, unlabelled"
            handles.append(Line2D([], [], marker="o", linestyle="", color=_GREY, label=f"{rest} ({grey:,})"))
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 1 - 0.3 / fig_h),
            ncol=min(len(handles), _LEGEND_COLUMNS),
            fontsize=8,
            frameon=False,
        )
    path = Path(out_png)
    _atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))
    return drawn


def _draw_thumbnails(
    ax: Any, result: MapResult, groups: list[str], colours: dict[str, str], cap: int, thumb_px: int | None
) -> int:
    """Paste thumbnails onto one transparent layer the size of the axes, drawn above the dots."""
    from matplotlib.colors import to_rgb
    from PIL import Image, ImageOps

    from .sheets import MAX_SIDE, thumbnails

    ax.apply_aspect()  # fixes the axes' pixel box
    box = ax.get_window_extent()
    width, height = max(1, round(box.width)), max(1, round(box.height))
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if thumb_px is None:  # 96 px up to ~700 points, 40 px from ~4,000 (on the 1800 px long side)
        thumb_px = int(np.clip(1.5 * max(width, height) / np.sqrt(len(result)), 40, 96))
    tile = min(thumb_px, MAX_SIDE)
    span_px = _square_box(result.xy)[1] * width / (x1 - x0)  # the grid's side, in pixels
    coarsest, finest = (max(1, round(span_px / (tile * share))) for share in _CELLS)
    grid = choose_grid(result.xy, coarsest, finest, cap)
    chosen = spread_subset(result.xy, grid, cap, result.seed)
    if len(chosen) == 0:
        return 0
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    drawn = 0
    for row, img in zip(chosen, thumbnails([result.paths[i] for i in chosen], tile), strict=True):
        if img is None:
            continue
        frame = tuple(round(255 * c) for c in to_rgb(colours[groups[row]] if result.groups else "#ffffff"))
        img = ImageOps.expand(img, border=2, fill=frame)
        px = (result.xy[row, 0] - x0) / (x1 - x0) * width
        py = (y1 - result.xy[row, 1]) / (y1 - y0) * height
        layer.paste(img.convert("RGBA"), (round(px - img.width / 2), round(py - img.height / 2)))
        drawn += 1
    ax.imshow(layer, extent=(x0, x1, y0, y1), interpolation="none", zorder=3)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    return drawn


def read_labels(path: str | os.PathLike[str]) -> dict[str, str]:
    """Labels by path from a Parquet file with a ``path`` column and a ``label`` column (a
    predictions file) or a ``cluster`` column (a clusters file; -1 reads as ``"noise"``), for
    ``make_map(..., color_by="label", labels=read_labels(path))``."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        column = "label" if "label" in names else "cluster"
        table = pq.read_table(path, columns=["path", column])
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise OptionError(
            f"{path} has no labels (a path column and a label or cluster column): {exc}"
        ) from exc
    values = table.column(column).to_pylist()
    if column == "cluster":
        values = ["noise" if v is not None and v < 0 else str(v) for v in values]
    return dict(zip(table.column("path").to_pylist(), [str(v) for v in values], strict=True))


def write_coords(result: MapResult, path: str | os.PathLike[str]) -> Path:
    """Write the coordinates as Parquet: ``path``, ``x``, ``y`` (float32), ``row`` (the vector's
    row in the output as loaded) and ``group`` (null when uncoloured); the seed and the number
    of vectors in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "path": pa.array(result.paths, type=pa.string()),
            "x": pa.array(result.xy[:, 0], type=pa.float32()),
            "y": pa.array(result.xy[:, 1], type=pa.float32()),
            "row": pa.array(result.rows, type=pa.int64()),
            "group": pa.array(result.groups if result.groups else [None] * len(result), type=pa.string()),
        }
    ).replace_schema_metadata(
        {b"imgbeddings.seed": str(result.seed).encode(), b"imgbeddings.total": str(result.total).encode()}
    )
    path = Path(path)
    _atomic_save(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_html(result: MapResult, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """A standalone HTML page: the map as inline SVG (one dot per point, coloured by group,
    its path and group shown on hover) and a legend. No scripts, nothing fetched."""
    groups = result.groups or [""] * len(result)
    colours = palette(groups)
    lo, span = _square_box(result.xy)
    pos = (result.xy - lo) / span * 960 + 20
    dots = []
    for (x, y), p, g in zip(pos, result.paths, groups, strict=True):
        tip = html.escape(f"{p} ({g})" if g else p)
        circle = f'<circle cx="{x:.1f}" cy="{1000 - y:.1f}" r="3" fill="{colours[g]}">'
        dots.append(f"{circle}<title>{tip}</title></circle>")
    counts = Counter(groups)
    legend = "".join(
        f'<li><span style="color:{colours[g]}">&#9679;</span> {html.escape(g)} ({counts[g]:,})</li>'
        for g in sorted(counts, key=lambda g: (-counts[g], g))
        if colours[g] != _GREY
    )
    heading = html.escape(title or _describe(result))
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>imgbeddings map</title>\n'
        "<style>body{font-family:sans-serif;margin:1em}svg{max-width:100%;height:auto;border:1px solid #ddd}"
        "circle:hover{stroke:#000;stroke-width:2}ul{list-style:none;padding:0;columns:3}</style></head>\n"
        f"<body><h3>{heading}</h3>\n"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 1000" width="1000" height="1000">\n'
        + "\n".join(dots)
        + f"\n</svg>\n<ul>{legend}</ul>\n</body></html>\n"
    )
    path = Path(path)
    _atomic_save(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
