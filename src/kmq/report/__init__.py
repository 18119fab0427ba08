"""The HTML report of a selection, an iterative run or a benchmark results folder.

:func:`write_report` writes one self-contained file: plots are inline PNGs, CSS and JS are
inline, nothing is fetched from the network, so it opens in any browser, offline. Every
section has a stable id:

- ``summary``: input, method, budget, k and silhouette, seed, timings, rejects, notes;
- ``composition``: pool vs selection per source and per cluster;
- ``cluster-map``: PCA of the centroids (size = cluster size, colour = share selected);
- ``clusters``: a sortable table of the largest clusters with distinctive terms (c-TF-IDF),
  an automatic label and example prompts;
- ``quality``: pool vs selected quality distributions;
- ``rounds`` (iterative runs): cluster and source weights per round, feedback per round, and
  the clusters boosted or starved most;
- ``benchmarks`` (a results folder): each ``*.md`` rendered and each ``*.png`` embedded.

What the folder lacks (an input file that moved, no ``clusters.npz``, no quality) is said in the
report instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kmq.atomic import write_text
from kmq.errors import KmqError
from kmq.outputs import MANIFEST
from kmq.report.html import page
from kmq.report.load import load_iterate, load_select
from kmq.report.sections import MAX_CLUSTERS, benchmark_section, selection_sections

REPORT = "report.html"


def write_report(
    path: str | Path,
    out: str | Path | None = None,
    *,
    centroids: np.ndarray | None = None,
    max_clusters: int = MAX_CLUSTERS,
) -> Path:
    """Write the HTML report of ``path`` to ``out`` (default ``path/report.html``).

    ``path`` is a ``kmq select`` output folder, a ``kmq iterate`` run folder, or a folder of
    benchmark results (``*.md`` tables and ``*.png`` plots). ``centroids`` (k × d) replace the
    ones in ``clusters.npz`` for the cluster map; the cluster table lists the ``max_clusters``
    largest clusters. Returns the path written.
    """
    folder = Path(path)
    if max_clusters < 1:
        raise KmqError(f"max_clusters must be >= 1, got {max_clusters}")
    if (folder / "config.json").exists():
        data = load_iterate(folder, centroids)
        title, sections = f"kmq iterate: {folder.name}", selection_sections(data, max_clusters)
    elif (folder / MANIFEST).exists():
        data = load_select(folder, centroids)
        title, sections = f"kmq select: {folder.name}", selection_sections(data, max_clusters)
    elif any(folder.glob("*.md")) or any(folder.glob("*.png")):
        title, sections = f"kmq benchmarks: {folder.name}", [benchmark_section(folder)]
    else:
        raise KmqError(
            f"{folder} is neither a kmq select output folder ({MANIFEST}), a kmq iterate run "
            "folder (config.json) nor a benchmark results folder (*.md, *.png)"
        )
    target = Path(out) if out is not None else folder / REPORT
    write_text(target, page(title, sections))
    return target
