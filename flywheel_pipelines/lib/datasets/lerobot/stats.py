"""Dataset statistics as lerobot 0.4.4 computes them (``compute_stats.py``), for numeric features.

Per episode: min, max, mean, std, count and the histogram quantiles of ``RunningQuantileStats``;
for the dataset: lerobot's ``aggregate_stats`` (count-weighted mean, parallel variance,
count-weighted quantiles). The operations and dtypes follow lerobot's so that the float rounding
matches: a port, kept apart from the writer because it has to track lerobot's numerics, not our
file layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flywheel_pipelines.lib.datasets.lerobot.format import DEFAULT_QUANTILES, QUANTILE_KEYS

_NUM_QUANTILE_BINS = 5000


def _episode_stats(
    episode_data: dict[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """``compute_episode_stats`` for numeric features: reduce over frames (axis 0)."""
    return {
        name: _feature_stats(data, keepdims=data.ndim == 1)
        for name, data in episode_data.items()
    }


def _feature_stats(array: np.ndarray, *, keepdims: bool) -> dict[str, np.ndarray]:
    """``get_feature_stats(array, axis=0, keepdims)``."""
    reshaped = array.reshape(-1, 1) if array.ndim == 1 else array
    sample_count = array.shape[0]
    if reshaped.shape[0] < 2:
        # _compute_basic_stats: too few samples for a histogram, quantiles fall back to the mean.
        stats = {
            "min": np.min(reshaped, axis=0),
            "max": np.max(reshaped, axis=0),
            "mean": np.mean(reshaped, axis=0),
            "std": np.std(reshaped, axis=0),
            "count": np.array([sample_count]),
        }
        for key in QUANTILE_KEYS:
            stats[key] = stats["mean"].copy()
    else:
        stats = _running_quantile_stats(reshaped)
        stats["count"] = np.array([sample_count])
    if keepdims and len(array.shape) == 1:
        # _reshape_for_vector_stats keeps a 1-D input's stats as shape (1,).
        stats = {k: v if k == "count" else v.reshape(1) for k, v in stats.items()}
    return stats


def _running_quantile_stats(batch: np.ndarray) -> dict[str, np.ndarray]:
    """``RunningQuantileStats().update(batch).get_statistics()`` for a single batch.

    The operations and their dtypes follow lerobot's so the float rounding is the same: float32
    data gives float32 min/max/mean/std, and histogram quantiles in float64.
    """
    num_elements, vector_length = batch.shape
    mean = np.mean(batch, axis=0)
    mean_of_squares = np.mean(batch**2, axis=0)
    minimum = np.min(batch, axis=0)
    maximum = np.max(batch, axis=0)
    bin_edges = [
        np.linspace(minimum[i] - 1e-10, maximum[i] + 1e-10, _NUM_QUANTILE_BINS + 1)
        for i in range(vector_length)
    ]
    count = num_elements
    mean += (np.mean(batch, axis=0) - mean) * (num_elements / count)
    mean_of_squares += (np.mean(batch**2, axis=0) - mean_of_squares) * (
        num_elements / count
    )
    histograms = [
        np.zeros(_NUM_QUANTILE_BINS) + np.histogram(batch[:, i], bins=bin_edges[i])[0]
        for i in range(vector_length)
    ]
    variance = mean_of_squares - mean**2
    stats = {
        "min": minimum.copy(),
        "max": maximum.copy(),
        "mean": mean.copy(),
        "std": np.sqrt(np.maximum(0, variance)),
        "count": np.array([count]),
    }
    for q, key in zip(DEFAULT_QUANTILES, QUANTILE_KEYS, strict=True):
        target = q * count
        stats[key] = np.array(
            [
                _single_quantile(h, e, target)
                for h, e in zip(histograms, bin_edges, strict=True)
            ]
        )
    return stats


def _single_quantile(hist: np.ndarray, edges: np.ndarray, target_count: float) -> float:
    cumsum = np.cumsum(hist)
    idx = np.searchsorted(cumsum, target_count)
    if idx == 0:
        return edges[0]
    if idx >= len(cumsum):
        return edges[-1]
    count_before = cumsum[idx - 1]
    count_in_bin = cumsum[idx] - count_before
    if count_in_bin == 0:
        return edges[idx]
    fraction = (target_count - count_before) / count_in_bin
    return edges[idx] + fraction * (edges[idx + 1] - edges[idx])


def _aggregate_stats(
    stats_list: list[dict[str, dict[str, np.ndarray]]],
) -> dict[str, dict[str, np.ndarray]]:
    """``aggregate_stats``, keeping the first stats' feature order instead of a set's."""
    keys: list[str] = []
    for stats in stats_list:
        keys.extend(k for k in stats if k not in keys)
    return {
        key: _aggregate_feature_stats([s[key] for s in stats_list if key in s])
        for key in keys
    }


def _aggregate_feature_stats(
    stats_ft_list: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    means = np.stack([s["mean"] for s in stats_ft_list])
    variances = np.stack([s["std"] ** 2 for s in stats_ft_list])
    counts = np.stack([s["count"] for s in stats_ft_list])
    total_count = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = np.expand_dims(counts, axis=-1)
    total_mean = (means * counts).sum(axis=0) / total_count
    delta_means = means - total_mean
    total_variance = ((variances + delta_means**2) * counts).sum(axis=0) / total_count
    aggregated = {
        "min": np.min(np.stack([s["min"] for s in stats_ft_list]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats_ft_list]), axis=0),
        "mean": total_mean,
        "std": np.sqrt(total_variance),
        "count": total_count,
    }
    quantile_keys = [
        k for k in stats_ft_list[0] if k.startswith("q") and k[1:].isdigit()
    ]
    for key in quantile_keys:
        if all(key in s for s in stats_ft_list):
            values = np.stack([s[key] for s in stats_ft_list])
            aggregated[key] = (values * counts).sum(axis=0) / total_count
    return aggregated


def _flatten(d: dict, parent_key: str = "", sep: str = "/") -> dict:
    items: dict = {}
    for key, value in d.items():
        new_key = f"{parent_key}{sep}{key}" if parent_key else key
        if isinstance(value, dict):
            items.update(_flatten(value, new_key, sep))
        else:
            items[new_key] = value
    return items


def _serialize_stats(
    stats: dict[str, dict[str, np.ndarray]],
) -> dict[str, dict[str, Any]]:
    return {
        name: {key: value.tolist() for key, value in ft.items()}
        for name, ft in stats.items()
    }
