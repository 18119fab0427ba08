"""Distinctive terms per cluster (c-TF-IDF over word tokens, stop words left out)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

TERMS = 8  # distinctive terms per cluster
LABEL_TERMS = 3  # terms in the automatic label
TERM_TEXT_CHARS = 2000  # characters of each text that count for the terms
TOKEN = re.compile(r"[^\W\d_]{3,}")
_STOPWORDS = """
    about above after again against all also among and another any are around because been
    before being below between both but can cannot could did does doing done down during each
    either else even ever every few for from further get gets given had has have having her here
    hers herself him himself his how however into its itself just least less let like made make
    many may might more most much must myself neither nor not now off once one only onto other
    others our ours ourselves out over own per same shall she should since some such than that
    the their theirs them themselves then there these they this those though through thus too
    under until upon use used using very was way well were what when where whether which while
    who whom whose why will with within without would yet you your yours yourself yourselves
"""


STOPWORDS = frozenset(_STOPWORDS.split())


def distinctive_terms(texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """The ``TERMS`` words most particular to each cluster by class-based TF-IDF (c-TF-IDF):
    tf of the word in the cluster × log(1 + average words per cluster / the word's count in
    all texts). Stop words and words under 3 letters do not count."""
    vocab: dict[str, int] = {}
    ids, owners = [], []
    for text, label in zip(texts, labels, strict=True):
        words = [w for w in TOKEN.findall(text[:TERM_TEXT_CHARS].lower()) if w not in STOPWORDS]
        if label >= 0 and words:
            ids.append(np.array([vocab.setdefault(w, len(vocab)) for w in words], dtype=np.int64))
            owners.append(np.full(len(words), label, dtype=np.int64))
    if not ids:
        return [[] for _ in range(k)]
    n_terms = len(vocab)
    pairs, counts = np.unique(
        np.concatenate(owners) * n_terms + np.concatenate(ids), return_counts=True
    )
    cluster, term = np.divmod(pairs, n_terms)
    words_in = np.bincount(cluster, weights=counts, minlength=k)
    frequency = np.bincount(term, weights=counts, minlength=n_terms)
    average = counts.sum() / np.count_nonzero(words_in)
    score = counts / words_in[cluster] * np.log1p(average / frequency[term])
    order = np.lexsort((-score, cluster))
    starts = np.searchsorted(cluster[order], np.arange(k))
    rank = np.arange(len(order)) - starts[cluster[order]]
    names = list(vocab)
    out: list[list[str]] = [[] for _ in range(k)]
    for i in order[rank < 2 * TERMS]:
        words = out[cluster[i]]
        word = names[term[i]]
        if len(words) < TERMS and not any(same_stem(word, w) for w in words):
            words.append(word)
    return out


def same_stem(a: str, b: str) -> bool:
    """A crude stemmer: ``reverse``/``reversed``, ``candy``/``candies`` count as one word."""
    common = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return common >= 4 and common >= min(len(a), len(b)) - 2
