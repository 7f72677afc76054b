"""How good and how varied generated samples are, measured on feature vectors: the Fréchet distance
between Gaussian fits, k-NN manifold precision and recall (Kynkäänniemi et al. 2019), and the class
histogram of samples against uniform. Pure numpy: the caller chooses the feature extractor and names
the metric after it (`fid_lenet` is not the Inception FID).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _features(x: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name}: need a (n ≥ {min_rows}, d) feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features hold NaN or infinite values")
    return x


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, n − 1) covariance of (n, d) features, as pytorch-fid computes them."""
    x = _features(features, "features", 2)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).

    Tr((Σ₁Σ₂)^½) is computed as Σ √λ of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues as
    Σ₁Σ₂), so it is real by construction; eigenvalues below zero from round-off count as zero, and
    the result, mathematically ≥ 0, is clipped at 0 for the same reason."""
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    root = _psd_sqrt(s1)
    m = root @ s2 @ root
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean), 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussian fits of two (n, d) feature sets."""
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def knn_radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (the radius of its k-NN ball)."""
    radii = np.empty(len(x))
    for start in range(0, len(x), chunk):
        d = _pairwise_sq(x[start:start + chunk], x)
        radii[start:start + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the row itself
    return np.sqrt(radii)


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    """Fraction of points inside at least one ball (centre, radius)."""
    inside = 0
    for start in range(0, len(points), chunk):
        d = np.sqrt(_pairwise_sq(points[start:start + chunk], centres))
        inside += int((d <= radii[None, :]).any(axis=1).sum())
    return inside / len(points)


class PrecisionRecall(NamedTuple):
    precision: float  # fraction of samples inside the real manifold: fidelity
    recall: float     # fraction of real images inside the sample manifold: diversity


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
    balls reaching every point's k-th nearest neighbour in its own set (the paper's default k = 3)."""
    real = _features(real, "real", k + 1)
    fake = _features(fake, "fake", k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    precision = _coverage(fake, real, knn_radii(real, k, chunk), chunk)
    recall = _coverage(real, fake, knn_radii(fake, k, chunk), chunk)
    return PrecisionRecall(precision, recall)


class ClassCoverage(NamedTuple):
    histogram: np.ndarray   # fraction of samples per class
    tv_distance: float      # ½ Σ |p − 1/K|: 0 for uniform, 1 − 1/K when one class takes all
    kl_from_uniform: float  # KL(p ‖ uniform) = log K − H(p), in nats
    classes_seen: int


def class_coverage(labels: np.ndarray, num_classes: int) -> ClassCoverage:
    """Mode coverage: the class histogram of samples (labels from a trained classifier) against uniform."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be a non-empty 1-D array in 0..{num_classes - 1}")
    p = np.bincount(labels, minlength=num_classes) / labels.size
    nonzero = p[p > 0]
    kl = float(np.log(num_classes) + (nonzero * np.log(nonzero)).sum())
    return ClassCoverage(p, float(0.5 * np.abs(p - 1.0 / num_classes).sum()), max(kl, 0.0), int((p > 0).sum()))
