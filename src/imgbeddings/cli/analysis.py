"""Commands that use an output's vectors (:mod:`imgbeddings.analysis`; the ``[analysis]``
extra): ``index``, ``search``, ``dedup``, ``dedup-undo``, ``cluster``, ``map``, ``classify
train|predict``, ``pca fit``."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import errors
from .app import EXIT_PARTIAL, app, err_console, readable_path, stderr_is_terminal

#: The OUTPUT argument every command here takes.
OutputArg = Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder of imgbeddings embed.")]


@app.command("index")
def index_cmd(
    output: OutputArg,
    kind: Annotated[
        str, typer.Option(metavar="KIND", help="auto | flat (exact) | hnsw | ivf | ivf-flat | ivf-pq.")
    ] = "auto",
    memory_mb: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="MB", min=1, help="The most memory the index may take (default: half of what is free)."
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build from scratch.")] = False,
) -> None:
    """Build the nearest-neighbour index of OUTPUT (or bring it up to date); search and dedup use it."""
    from ..analysis.index import build_index

    info = build_index(output, kind=kind, memory_budget_mb=memory_mb, rebuild=rebuild)
    recall = f", recall@10 {info.recall:.3f}" if info.recall is not None else ""
    err_console.print(
        f"index {info.action or 'read'}: {info.kind}, {info.rows} vectors x {info.dim}{recall}, "
        f"{info.size_bytes / 1e6:.1f} MB (+{info.added} -{info.removed}) in {info.seconds:.1f} s",
        markup=False,
    )
    typer.echo(str(info.path))


@app.command("search")
def search_cmd(
    output: OutputArg,
    queries: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(
            metavar="[QUERY...]", help="Image files (embedded with OUTPUT's model) or paths in OUTPUT."
        ),
    ] = None,
    text: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--text", "-t", metavar="TEXT", help="Find images matching TEXT (repeatable); needs a text model."
        ),
    ] = None,
    text_model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="DIR|REPO",
            help="Text model for --text (default: the text tower exported beside OUTPUT's model).",
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", metavar="K", min=1, help="Results per query.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query on stdout.")] = False,
    exclude_self: Annotated[
        bool, typer.Option("--exclude-self", help="Leave a stored query out of its results.")
    ] = False,
) -> None:
    """The most similar images in OUTPUT to each QUERY image, or to each --text (cosine similarity).

    Exit code 0; 6 when a query could not be read (the others are answered); 8 when a query
    model or text model does not fit OUTPUT; 5 when there is no text model for --text.
    """
    import json

    from ..analysis.search import search, search_text

    if not queries and not text:
        raise errors.OptionError("give at least one QUERY image or --text")
    if text_model is not None and not text:
        raise errors.OptionError("--text-model is for --text queries")
    results = search(output, queries, k, exclude_self=exclude_self) if queries else []
    if text:
        results += search_text(output, text, k, text_model=text_model)
    failed = 0
    for result in results:
        if not result.ok:
            failed += 1
            err_console.print(f"failed {readable_path(result.query)}: {result.error}", markup=False)
        if as_json:
            typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
            continue
        if result.ok:
            shown = repr(result.query) if result.source == "text" else readable_path(result.query)
            typer.echo(f"{shown}  ({result.source}, {result.method})")
            for hit in result.results:
                typer.echo(f"  {hit.rank:>3}  {hit.score:.4f}  {readable_path(hit.path)}")
    if results and all(r.ok and not r.results for r in results) and not exclude_self:
        err_console.print(f"no results: {output} holds no vectors (see imgbeddings info)", markup=False)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("dedup")
def dedup_cmd(
    output: OutputArg,
    threshold: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="T",
            min=-1,
            max=1,
            help="Cosine at or above which images are near-duplicates (default: calibrated).",
        ),
    ] = None,
    report: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="FILE", help="Write the groups to FILE.parquet or FILE.csv (path, group, keep, score)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per group on stdout.")] = False,
    move_to: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="DIR", help="Move the images that are not kept into DIR (writes a manifest to undo it)."
        ),
    ] = None,
    center: Annotated[
        bool, typer.Option("--center", help="Compare mean-centred vectors instead of raw cosine.")
    ] = False,
    sample: Annotated[
        int, typer.Option(metavar="N", min=1, help="Images whose altered copies calibrate the threshold.")
    ] = 64,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|FILE",
            help="The model OUTPUT was made with, for calibration (default: the one it records).",
        ),
    ] = None,
    pca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", exists=True, dir_okay=False, help="The PCA OUTPUT was made with."),
    ] = None,
) -> None:
    """Near-duplicate groups in OUTPUT, each around the image it keeps (nothing is moved unless asked).

    Exit code 0; 8 when OUTPUT is empty or the model given differs from OUTPUT's.
    """
    import json

    from ..analysis.dedup import dedup
    from ..analysis.dedup_files import move_to as move_files
    from ..analysis.dedup_files import write_report

    embedder = None
    if threshold is None and (model is not None or pca is not None):
        from ..analysis.query import embedder_for

        embedder = embedder_for(output, model=model, pca=pca)
    result = dedup(output, threshold=threshold, center=center, sample=sample, embedder=embedder)
    if result.threshold is None:  # fewer than 2 vectors: nothing to calibrate or compare
        err_console.print(
            f"nothing to compare: {output} holds {result.compared} vector(s); 0 group(s)", markup=False
        )
    else:
        how = "given" if result.calibration is None else "calibrated on the collection"
        err_console.print(
            f"threshold {result.threshold:.4f} ({how}); {result.compared} images compared "
            f"({result.method}), {len(result.groups)} group(s), {result.duplicates} near-duplicate(s)",
            markup=False,
        )
    if result.calibration is not None and not result.calibration.separated:
        err_console.print(
            "warning: altered copies and distinct images overlap in similarity: the threshold is a "
            "compromise; check the groups or pass --threshold",
            markup=False,
        )
    for group in result.groups:
        if as_json:
            typer.echo(json.dumps(group, ensure_ascii=False))
        else:
            typer.echo(f"group {group['group']}: keep {readable_path(group['keep'])}")
            for member in group["members"][1:]:
                typer.echo(f"  {member['score']:.4f}  {readable_path(member['path'])}")
    if report is not None:
        err_console.print(f"report: {write_report(result, report)}", markup=False)
    if move_to is not None:
        moved = move_files(result, move_to)
        err_console.print(
            f"moved {len(moved.done)} file(s) to {move_to} ({len(moved.skipped)} skipped); undo with the "
            f"manifest {moved.manifest}",
            markup=False,
        )


@app.command("dedup-undo")
def dedup_undo_cmd(
    manifest: Annotated[
        Path,
        typer.Argument(
            metavar="MANIFEST", exists=True, dir_okay=False, help="The manifest dedup --move-to wrote."
        ),
    ],
) -> None:
    """Move the files a dedup --move-to run moved back where they were (nothing is overwritten).

    Exit code 0 when every file is back, 6 when some were skipped (each is named with the reason).
    """
    from ..analysis.dedup_files import undo

    report = undo(manifest)
    for src, reason in report.skipped:
        err_console.print(f"skipped {readable_path(src)}: {reason}", markup=False)
    err_console.print(f"moved {len(report.done)} file(s) back, {len(report.skipped)} skipped", markup=False)
    if report.skipped:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("cluster")
def cluster_cmd(
    output: OutputArg,
    k: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--k", "-k", metavar="N", min=1, help="Number of clusters (k-means)."),
    ] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="Find the clusters and their number (HDBSCAN on a 5-d UMAP).")
    ] = False,
    out_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output", "-o", metavar="FILE", help="Clusters file (default: OUTPUT/clusters.parquet)."
        ),
    ] = None,
    sheets: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="DIR", help="Folder for one contact sheet PNG per cluster (default: OUTPUT/clusters)."
        ),
    ] = None,
    no_sheets: Annotated[bool, typer.Option("--no-sheets", help="Write no contact sheets.")] = False,
    per_sheet: Annotated[int, typer.Option(metavar="N", min=1, help="Thumbnails per sheet.")] = 36,
    min_cluster_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=2, help="With --auto: smallest cluster (default: from N images)."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state (same seed, same clusters).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per cluster on stdout.")] = False,
) -> None:
    """Cluster OUTPUT's images (k-means with --k, HDBSCAN with --auto), a contact sheet per cluster.

    Prints one line per cluster: id, size, contact sheet (tab-separated); --json for objects.

    Exit code 0; 2 for neither or both of --k and --auto; 8 when OUTPUT holds too few vectors.
    """
    import json

    from ..analysis.cluster import cluster, contact_sheets, write_clusters
    from ..analysis.vectors import VectorSet

    if (k is None) == (not auto):
        raise errors.OptionError("give either --k N (k-means) or --auto (HDBSCAN), not both and not neither")
    started = time.perf_counter()
    vs = VectorSet.from_output(output)
    result = cluster(vs, k=k, auto=auto, seed=seed, min_cluster_size=min_cluster_size)
    target = write_clusters(result, out_file or Path(output) / "clusters.parquet")
    written = (
        [] if no_sheets else contact_sheets(result, sheets or Path(output) / "clusters", per_sheet=per_sheet)
    )
    by_id = {(-1 if p.stem == "noise" else int(p.stem.split("_")[1])): p for p in written}
    noise = f", {result.n_noise} noise" if auto else ""
    err_console.print(
        f"{result.method}: {result.n_clusters} cluster(s){noise} over {len(result)} images in "
        f"{time.perf_counter() - started:.1f} s; clusters: {target}"
        + (f"; contact sheets: {written[0].parent}" if written else ""),
        markup=False,
    )
    for cluster_id, size in result.sizes().items():
        sheet = by_id.get(cluster_id)
        if as_json:
            nearest = [result.paths[i] for i in result.members(cluster_id)[:5]]
            record = {"cluster": cluster_id, "size": size, "sheet": str(sheet) if sheet else None}
            typer.echo(json.dumps(record | {"nearest": nearest}, ensure_ascii=False))
        else:
            name = "noise" if cluster_id < 0 else str(cluster_id)
            typer.echo(f"{name}\t{size}\t{sheet or ''}")


class ColorBy(str, Enum):
    cluster = "cluster"
    label = "label"
    folder = "folder"
    none = "none"


@app.command("map")
def map_cmd(
    output: OutputArg,
    png: Annotated[Path, typer.Option("--output", "-o", metavar="FILE.png", help="The map to draw.")],
    color_by: Annotated[
        ColorBy,
        typer.Option(
            help="cluster (k-means with --k, or --labels FILE of imgbeddings cluster) | label (--labels "
            "FILE) | folder (parent folder) | none.",
        ),
    ] = ColorBy.cluster,
    labels: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="Parquet with path and label (classify predict) or cluster (cluster) columns.",
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("--k", "-k", metavar="N", min=1, help="Clusters for --color-by cluster.")
    ] = 8,
    sample: Annotated[
        int, typer.Option(metavar="N", min=0, help="Most points mapped, sampled with --seed (0: all).")
    ] = 10_000,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state of the sample, PCA and UMAP.")] = 0,
    thumbnails: Annotated[
        bool, typer.Option("--thumbnails/--no-thumbnails", help="Draw image thumbnails (else dots only).")
    ] = True,
    coords: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", help="Also write the 2-D coordinates (Parquet: path, x, y, group)."),
    ] = None,
    html: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", help="Also write a standalone HTML map (paths shown on hover)."),
    ] = None,
    title: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Title above the map.")] = None,  # noqa: UP045
) -> None:
    """Draw a 2-D map (UMAP) of OUTPUT's images: thumbnails at their positions, coloured by group."""
    from ..analysis.mapping import make_map, read_labels
    from ..analysis.vectors import VectorSet

    if color_by is ColorBy.label and labels is None:
        raise errors.OptionError("--color-by label needs --labels FILE (a predictions or clusters file)")
    if png.suffix.lower() != ".png":
        raise errors.OptionError(f"the map is a PNG: give -o a .png name, not {png.name!r}")
    started = time.perf_counter()
    vs = VectorSet.from_output(output)
    mode: Any = None if color_by is ColorBy.none else color_by.value
    mapping_labels = read_labels(labels) if labels is not None and mode in ("cluster", "label") else None
    if mode == "cluster" and mapping_labels is not None:
        mode = "label"
    result = make_map(
        vs,
        png,
        color_by=mode,
        labels=mapping_labels,
        sample=sample or None,
        seed=seed,
        thumbnails=thumbnails,
        k=k,
        title=title,
        coords_out=coords,
        html_out=html,
    )
    shown = (
        f"{len(result)} of {result.total} images (sample, seed {seed})"
        if result.sampled
        else (f"{len(result)} images")
    )
    groups = f", {len(set(result.groups))} group(s)" if result.groups else ""
    err_console.print(
        f"map: {shown}{groups}, {result.thumbnails} thumbnail(s), in {time.perf_counter() - started:.1f} s"
        + (f"; coordinates: {coords}" if coords else "")
        + (f"; html: {html}" if html else ""),
        markup=False,
    )
    typer.echo(str(png))


classify_app = typer.Typer(
    name="classify",
    help="Classifiers: a linear probe (train on a folder per class, predict), or zero-shot labels.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(classify_app)


def _confusion_lines(classes: list[str], confusion: list[list[int]]) -> list[str]:
    width = max(8, *(len(c) for c in classes))
    head = " " * width + "  " + "  ".join(f"{c[:width]:>{width}}" for c in classes)
    rows = [
        f"{c:>{width}}  " + "  ".join(f"{n:>{width}}" for n in row)
        for c, row in zip(classes, confusion, strict=True)
    ]
    return ["confusion (rows: true class, columns: predicted; cross-validated):", head, *rows]


def _emit_predictions(prediction: Any, out_file: Path | None) -> None:
    """Labels to ``out_file`` (Parquet; its path on stdout), or as path<TAB>label<TAB>probability lines."""
    from ..analysis.classify import write_predictions

    if out_file is not None:
        typer.echo(str(write_predictions(prediction, out_file)))
        return
    for path, label, p in zip(
        prediction.paths, prediction.labels, prediction.confidence.tolist(), strict=True
    ):
        typer.echo(f"{readable_path(path)}\t{label}\t{p:.4f}")


@classify_app.command("train")
def classify_train_cmd(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="DIR|OUTPUT",
            help="A folder with one sub-folder of images per class, or an output embedded from one.",
        ),
    ],
    probe_file: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE.json", help="The probe to write.")
    ],
    model: Annotated[
        str,
        typer.Option("--model", "-m", metavar="NAME|REPO|FILE", help="Model to embed DIR with."),
    ] = "patch32_v1",
    like: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="OUTPUT",
            help="Embed DIR the way OUTPUT was made (model, mode, normalisation, PCA): the probe then "
            "applies to OUTPUT.",
        ),
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast/--exact", help="Preprocessing mode (as for imgbeddings embed).")
    ] = True,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise the vectors.")] = False,
    pca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(metavar="FILE", exists=True, dir_okay=False, help="Project with a saved PCA (.npz)."),
    ] = None,
    balanced: Annotated[
        bool, typer.Option("--balanced", help="Weight classes inversely to their sizes.")
    ] = False,
    folds: Annotated[int, typer.Option(metavar="N", min=2, help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(metavar="N", help="Fold shuffling and solver random state.")] = 0,
) -> None:
    """Train a linear probe (logistic regression, C chosen by cross-validation) on one folder of
    images per class; prints its cross-validated accuracy and confusion matrix.

    Exit code 0; 6 when some images failed to embed (the probe is written without them; each is
    named); 2 for fewer than 2 classes or a class with fewer than 2 images.
    """
    from ..analysis.classify import train_probe
    from ..analysis.vectors import VectorSet
    from ..store import MANIFEST

    if Path(folder, MANIFEST).is_file():
        if like is not None or pca is not None:
            raise errors.OptionError(
                "DIR is an embedded output: its vectors are used as they are (drop --like/--pca)"
            )
        probe = train_probe(
            VectorSet.from_output(folder),
            labels="folder",
            class_weight="balanced" if balanced else None,
            folds=folds,
            seed=seed,
        )
    else:
        if like is not None:
            from ..analysis.query import embedder_for

            embedder = embedder_for(like, pca=pca)
        else:
            from ..embedder import Embedder

            embedder = Embedder(model, mode="fast" if fast else "exact", normalize=normalize, pca=pca)
        probe = train_probe(
            folder,
            embedder=embedder,
            class_weight="balanced" if balanced else None,
            folds=folds,
            seed=seed,
            progress=stderr_is_terminal(),
        )
    for f in probe.failures:
        err_console.print(f"failed {readable_path(f.source)}: {f.error}: {f.message}", markup=False)
    counts = ", ".join(f"{c} {n}" for c, n in probe.counts.items())
    err_console.print(
        f"probe: {len(probe.classes)} classes ({counts}), C={probe.C:g}, cross-validated accuracy "
        f"{probe.cv_accuracy:.3f} ({probe.cv_folds} folds)",
        markup=False,
    )
    for line in _confusion_lines(probe.classes, probe.confusion or []):
        err_console.print(line, markup=False)
    typer.echo(str(probe.save(probe_file)))
    if probe.failures:
        err_console.print(f"{len(probe.failures)} image(s) failed and were left out", markup=False)
        raise typer.Exit(EXIT_PARTIAL)


@classify_app.command("predict")
def classify_predict_cmd(
    output: OutputArg,
    probe_file: Annotated[
        Path,
        typer.Option("--probe", metavar="FILE.json", exists=True, dir_okay=False, help="A trained probe."),
    ],
    out_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            metavar="FILE.parquet",
            help="Write path, label, probability and p:<class> columns (default: print path<TAB>label"
            "<TAB>probability lines).",
        ),
    ] = None,
) -> None:
    """Label OUTPUT's images with a trained probe.

    Exit code 0; 8 when OUTPUT's vectors were made differently from the probe's training vectors.
    """
    from collections import Counter

    from ..analysis.classify import Probe
    from ..analysis.vectors import VectorSet

    probe = Probe.load(probe_file)
    prediction = probe.predict(VectorSet.from_output(output))
    tally = Counter(prediction.labels)
    err_console.print(
        f"predicted {len(prediction)} image(s): "
        + ", ".join(f"{c} {tally.get(c, 0)}" for c in probe.classes),
        markup=False,
    )
    _emit_predictions(prediction, out_file)


@classify_app.command("zero-shot")
def classify_zero_shot_cmd(
    output: OutputArg,
    labels: Annotated[
        str, typer.Option("--labels", metavar="A,B,...", help='Comma-separated labels, e.g. "cat,dog,car".')
    ],
    templates: Annotated[
        str,
        typer.Option(
            metavar="default|none|FILE",
            help='Prompts per label: default ("a photo of a {}." and 6 more), none (the label alone), '
            "or a file with one template per line.",
        ),
    ] = "default",
    text_model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="DIR|REPO", help="Text model (default: the text tower exported beside OUTPUT's model)."
        ),
    ] = None,
    out_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            metavar="FILE.parquet",
            help="Write path, label, probability and p:<label> columns (default: print path<TAB>label"
            "<TAB>probability lines).",
        ),
    ] = None,
) -> None:
    """Label OUTPUT's images with the most likely of --labels, with no training (zero-shot).

    Exit code 0; 2 for empty or repeated labels or bad templates; 5 when there is no text model;
    8 when the text model does not pair with OUTPUT's image model.
    """
    from collections import Counter

    from ..analysis.vectors import VectorSet
    from ..analysis.zero_shot import clean_labels, read_templates, zero_shot
    from ..text.embedder import TextEmbedder, text_model_for

    names = clean_labels(labels)
    prompts = read_templates(templates)
    model = text_model_for(output) if text_model is None else TextEmbedder(text_model)
    prediction = zero_shot(VectorSet.from_output(output), names, model, templates=prompts)
    tally = Counter(prediction.labels)
    err_console.print(
        f"zero-shot with {model.card.name} ({len(prompts)} template(s), "
        f"{model.card.similarity.activation}): {len(prediction)} image(s): "
        + ", ".join(f"{c} {tally.get(c, 0)}" for c in names[:20])
        + (f" and {len(names) - 20} more label(s)" if len(names) > 20 else ""),
        markup=False,
    )
    _emit_predictions(prediction, out_file)


pca_app = typer.Typer(
    name="pca",
    help="PCA of an output's vectors (apply it with imgbeddings embed --pca).",
    no_args_is_help=True,
)
app.add_typer(pca_app)


@pca_app.command("fit")
def pca_fit_cmd(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="An output folder embedded without --pca.")],
    dim: Annotated[int, typer.Option(metavar="N", min=1, help="Components to keep.")] = 128,
    pca_file: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE.npz", help="The PCA to write.")
    ] = Path("pca.npz"),
    whiten: Annotated[bool, typer.Option("--whiten", help="Scale components to unit variance.")] = False,
    sample: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(metavar="N", min=1, help="Fit on N rows drawn with --seed (default: all)."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Random state.")] = 0,
) -> None:
    """Fit a PCA on OUTPUT's vectors and save it as a portable .npz (arrays only, no pickle).

    Apply it when embedding: imgbeddings embed ... --pca FILE.npz (and Embedder(pca=FILE) in
    Python); the original imgbeddings(pca=...) reads the file too.
    """
    from ..analysis.reduce import fit_pca_on
    from ..analysis.vectors import VectorSet

    vs = VectorSet.from_output(output)
    model = fit_pca_on(vs, dim, whiten=whiten, sample=sample, seed=seed)
    written = model.save(pca_file)
    explained = model.total_explained_variance
    err_console.print(
        f"PCA {model.in_dim} -> {model.out_dim}"
        + (" (whitened)" if whiten else "")
        + f" fitted on {len(vs) if sample is None else min(sample, len(vs))} vectors, explains "
        f"{100 * (explained or 0):.1f} % of their variance; apply it with: imgbeddings embed ... "
        f"--pca {written}",
        markup=False,
    )
    typer.echo(str(written))
