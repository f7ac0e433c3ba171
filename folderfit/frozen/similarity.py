"""Neighbourhoods in feature space: nearest neighbours, near-duplicate pairs, copy groups and
outlier scores, all by cosine similarity of L2-normalised backbone features.

Why cosine on these features: a resized, re-encoded, slightly blurred or cropped copy of a
photo keeps most of its pooled features, while two different photos of one class rarely
do. Measured on trashnet-mini with tf_efficientnet_lite0 (see docs/review.md), so
the thresholds are documented, not guessed.

A second, backbone-free test finds resized and re-encoded copies: the Pearson correlation of
32x32 grayscale thumbnails. On trashnet-mini (600 photos) no two distinct photos correlate
above 0.9933, while JPEG re-encodes and resizes of one photo stay above 0.998.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from folderfit.images import decode

THUMBNAIL = 32  # px, grayscale
THUMBNAIL_CORRELATION = 0.998  # from here two thumbnails are one picture (resized/re-encoded)
_CHUNK = 2048  # rows per block of the pairwise products, at most
# bytes per block of the nearest-neighbour search: the products (float32), their negation and
# argpartition's int64 indices are 16 bytes per pair; 2048 rows stay up to N = 16,384
BLOCK_BYTES = 512 << 20
BYTES_PER_PAIR = 16


def block_rows(n: int) -> int:
    """Rows per block of the pairwise products among `n` rows: _CHUNK, fewer for large n so
    a block's working memory stays near BLOCK_BYTES (each row's result does not depend on
    the block it is computed in)."""
    return max(1, min(_CHUNK, BLOCK_BYTES // (BYTES_PER_PAIR * max(n, 1))))


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, k], cosine similarities [N, k]) of each normalised row's k nearest other
    rows, nearest first, ties by index (the row itself is never its own neighbour). Exact,
    by blocks of rows, so memory stays near BLOCK_BYTES (block_rows)."""
    k = min(k, len(z) - 1)
    index = np.zeros((len(z), k), dtype=np.int64)
    similarity = np.zeros((len(z), k), dtype=np.float32)
    rows_per_block = block_rows(len(z))
    for start in range(0, len(z), rows_per_block):
        block = z[start:start + rows_per_block] @ z.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf  # not its own neighbour
        # the k largest, then ordered by (similarity descending, index ascending)
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < len(z) - 1 else \
            np.argsort(-block, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(block, top, 1)
        order = np.lexsort((top, -values), axis=1)
        index[start:start + len(block)] = np.take_along_axis(top, order, 1)
        similarity[start:start + len(block)] = np.take_along_axis(values, order, 1)
    return index, similarity


def similar_pairs(z: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) of normalised rows with cosine similarity >= threshold:
    (i, j, similarity)."""
    return pairs_above(z, threshold - 1e-6)


def thumbnail_pixels(img) -> np.ndarray:
    """[32*32] uint8: a PIL image as a grayscale 32x32 thumbnail (box filter). prepare stores
    these for every image (paths.THUMBNAILS_NAME), as it has each stored copy decoded anyway."""
    from PIL import Image

    img.draft("L", (2 * THUMBNAIL, 2 * THUMBNAIL))  # an unloaded JPEG: decode at reduced scale
    small = img.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).ravel()


def thumbnails(files: list[Path], known: dict | None = None) -> np.ndarray:
    """[N, 32*32] float32: each file as a grayscale 32x32 thumbnail, centred and scaled to
    unit length, so the dot product of two rows is their pixel correlation. `known`: file ->
    thumbnail_pixels already made (by prepare); the others are read from the file (a file
    prepare listed: from its stored copy, as prepare made them)."""
    from PIL import Image

    known = known or {}
    rows = np.zeros((len(files), THUMBNAIL * THUMBNAIL), dtype=np.float32)
    for i, file in enumerate(files):
        pixels = known.get(Path(file).as_posix())
        if pixels is None and isinstance(file, decode.SourceImage):  # as prepare made it
            pixels = thumbnail_pixels(decode.read_prepared(file))
        elif pixels is None:
            with Image.open(file) as img:
                pixels = thumbnail_pixels(img)
        rows[i] = pixels
    rows -= rows.mean(1, keepdims=True)
    return normalise(rows)  # a flat image (all one value) stays all zeros: it matches nothing


def pairs_above(z: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) whose rows' dot product is >= threshold, by blocks of rows (exact;
    memory stays near BLOCK_BYTES: block_rows)."""
    pairs = []
    rows_per_block = block_rows(len(z))
    for start in range(0, len(z), rows_per_block):
        block = z[start:start + rows_per_block] @ z.T
        a, j = np.nonzero(block >= threshold)
        keep = start + a < j
        a, j = a[keep], j[keep]
        values = np.minimum(1.0, block[a, j]).tolist()
        pairs.extend(zip((start + a).tolist(), j.tolist(), values))
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
