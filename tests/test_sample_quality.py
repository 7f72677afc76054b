"""Sample-quality metrics (tasks/sample_quality.py) on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg

from tasks.sample_quality import (
    class_coverage,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    knn_radii,
    precision_recall,
)


def test_frechet_distance_of_identical_sets_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(200, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_on_a_hand_computed_2d_example() -> None:
    a = np.array([[1, 2], [-1, -2], [1, -2], [-1, 2]], dtype=float)        # mean 0, cov diag(4/3, 16/3)
    b = np.array([[2, 1], [-2, -1], [2, -1], [-2, 1]], dtype=float) + [3, 4]  # mean (3, 4), cov diag(16/3, 4/3)
    # |Δμ|² = 25; Tr Σa + Tr Σb = 40/3; (Σa Σb)^½ = diag(8/3, 8/3), twice its trace 32/3.
    assert frechet_distance(a, b) == pytest.approx(25 + 40 / 3 - 32 / 3)
    assert frechet_distance(b, a) == pytest.approx(25 + 8 / 3)


def test_frechet_distance_agrees_with_the_scipy_sqrtm_route() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.5
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    covmean = linalg.sqrtm(s1 @ s2).real
    reference = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_survives_singular_covariances() -> None:
    x = np.zeros((10, 4))
    x[:, 0] = np.arange(10)  # rank one: three zero eigenvalues
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x + 2.0) == pytest.approx(16.0)


def test_bad_feature_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="features hold NaN"):
        frechet_distance(np.array([[0.0], [np.nan]]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"need a \(n ≥ 2, d\) feature array, got shape \(1, 3\)"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros((4, 2)), np.zeros((4, 3)))


def test_knn_radii_exclude_the_point_itself() -> None:
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2, chunk=1).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_precision_recall_on_hand_computed_sets() -> None:
    real = np.arange(5.0).reshape(-1, 1)  # k = 1: every real ball has radius 1
    fake = np.array([[0.5], [10.0], [2.2], [4.9]])  # 10 is outside every real ball
    assert precision_recall(real, fake, k=1) == pytest.approx((0.75, 1.0))
    collapsed = np.array([[0.0], [0.1], [0.2], [0.3]])  # fake balls of radius 0.1: only real 0 is covered
    assert precision_recall(real, collapsed, k=1) == pytest.approx((1.0, 0.2))
    assert precision_recall(real, real + 100.0, k=1) == (0.0, 0.0)


def test_precision_recall_does_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.5, 1.0, size=(50, 3))
    assert precision_recall(real, fake, k=3, chunk=7) == precision_recall(real, fake, k=3)


def test_class_coverage_against_uniform() -> None:
    uniform = class_coverage(np.arange(100) % 10, 10)
    assert uniform.tv_distance == pytest.approx(0.0) and uniform.kl_from_uniform == pytest.approx(0.0)
    assert uniform.classes_seen == 10 and uniform.histogram.tolist() == [0.1] * 10
    collapsed = class_coverage(np.full(50, 3), 10)
    assert collapsed.tv_distance == pytest.approx(0.9) and collapsed.kl_from_uniform == pytest.approx(math.log(10))
    half = class_coverage(np.array([0, 1]), 4)  # p = (½, ½, 0, 0): TV ½, KL log 4 − log 2
    assert half.tv_distance == pytest.approx(0.5) and half.kl_from_uniform == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"labels must be a non-empty 1-D array in 0\.\.9"):
        class_coverage(np.array([10]), 10)
