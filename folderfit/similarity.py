"""Neighbourhoods in feature space: nearest neighbours, near-duplicate pairs, copy groups and
outlier scores, all by cosine similarity of L2-normalised backbone features.

Why cosine on these features: a resized, re-encoded, slightly blurred or cropped copy of a
photo keeps most of its pooled features, while two different photos of one class rarely
do. Measured on trashnet-mini with tf_efficientnet_lite0 (see README, "Label review"), so
the thresholds are documented, not guessed.
"""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _index(z: np.ndarray):
    from sklearn.neighbors import NearestNeighbors

    # brute force on normalised rows: exact, deterministic, chunked by scikit-learn
    return NearestNeighbors(metric="cosine", algorithm="brute").fit(z)


def nearest(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, k], cosine similarities [N, k]) of each row's k nearest other rows,
    nearest first (the row itself is never its own neighbour)."""
    k = min(k, len(z) - 1)
    distance, index = _index(z).kneighbors(n_neighbors=k)
    return index, 1.0 - distance


def similar_pairs(z: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) with cosine similarity >= threshold: (i, j, similarity)."""
    distance, index = _index(z).radius_neighbors(radius=max(0.0, 1.0 - threshold) + 1e-6)
    pairs = []
    for i, (dist, idx) in enumerate(zip(distance, index)):
        for d, j in zip(dist, idx):
            if i < j and 1.0 - d >= threshold - 1e-6:
                pairs.append((i, int(j), float(min(1.0, 1.0 - d))))
    return sorted(pairs)


def duplicate_threshold(nearest_similarity: np.ndarray, floor: float, share: float) -> float:
    """The similarity from which two images count as near-duplicates: at least `floor`, and
    their distance at most `share` of the median distance between nearest neighbours, so a
    set whose images all look alike (textures, scans) does not list every pair."""
    median = float(np.median(1.0 - nearest_similarity))
    return max(floor, 1.0 - share * median)


def groups(n: int, pairs) -> np.ndarray:
    """Group id per row: the connected components of the pairs (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)])


def outlier_flags(distance: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """(flag per row, threshold): mean distance to the nearest neighbours above
    Q3 + factor x IQR, the box-plot rule cleanlab's Datalab applies to the same score."""
    q1, q3 = np.percentile(distance, [25, 75])
    threshold = float(q3 + factor * (q3 - q1))
    return distance > threshold, threshold
