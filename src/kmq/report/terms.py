"""Distinctive terms per cluster: c-TF-IDF (as BERTopic defines it) on scikit-learn's word
counts, English stop words left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq._imports import require

TERMS = 8  # distinctive terms per cluster
LABEL_TERMS = 3  # terms in the automatic label
TERM_TEXT_CHARS = 2000  # characters of each text that count for the terms
WORD = r"(?u)\b[^\W\d_]{3,}\b"  # a word: three or more letters (no digits, no underscore)


def distinctive_terms(texts: Sequence[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """The ``TERMS`` words most particular to each of the ``k`` clusters, best first.

    A word's score in cluster ``j`` is c-TF-IDF: its share of the words of ``j`` × log(1 +
    average words per cluster / its count in all clusters). Words are counted by
    scikit-learn's ``CountVectorizer`` (lower-cased, :data:`WORD`, its English stop words left
    out) over the first ``TERM_TEXT_CHARS`` characters of each text; rows labelled -1 do not
    count. Ties go alphabetically.
    """
    text = require("sklearn.feature_extraction.text")
    sparse = require("scipy.sparse")
    inside = np.flatnonzero(np.asarray(labels) >= 0)
    out: list[list[str]] = [[] for _ in range(k)]
    vectorizer = text.CountVectorizer(stop_words="english", token_pattern=WORD)
    try:
        counts = vectorizer.fit_transform([texts[int(i)][:TERM_TEXT_CHARS] for i in inside])
    except ValueError:  # no row, or no word left in any row: an empty vocabulary
        return out
    members = sparse.csr_matrix(
        (np.ones(len(inside)), (labels[inside], np.arange(len(inside)))), shape=(k, len(inside))
    )
    per_cluster = sparse.csr_matrix(members @ counts)
    per_cluster.sort_indices()
    words_in = np.asarray(per_cluster.sum(axis=1)).ravel()
    frequency = np.asarray(per_cluster.sum(axis=0)).ravel()
    average = words_in.sum() / np.count_nonzero(words_in)
    cluster = np.repeat(np.arange(k), np.diff(per_cluster.indptr))
    term = per_cluster.indices
    scores = per_cluster.data / words_in[cluster] * np.log1p(average / frequency[term])
    names = vectorizer.get_feature_names_out()
    for j in range(k):
        row = slice(per_cluster.indptr[j], per_cluster.indptr[j + 1])
        best = np.argsort(-scores[row], kind="stable")[:TERMS]
        out[j] = [str(word) for word in names[term[row][best]]]
    return out
