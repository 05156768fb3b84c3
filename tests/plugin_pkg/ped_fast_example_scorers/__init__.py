"""An example ped_fast scorer plugin (docs/integrations.md).

ped_fast calls register() once, on its first scorer lookup, because this
package's pyproject declares it as an entry point in the
"ped_fast.scorers" group; nobody imports this package by hand.
"""
import numpy as np

import ped_fast


def class_separation(features, labels):
    """Between-class over within-class variance of `features` (N x D) for
    `labels` (N): summed over the dimensions, in float64. Higher when the
    classes lie further apart for their spread."""
    x = np.asarray(features.cpu() if hasattr(features, "cpu") else features, dtype=np.float64)
    _, index = np.unique(np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels), return_inverse=True)
    counts = np.bincount(index).astype(np.float64)
    means = np.zeros((counts.size, x.shape[1]))
    np.add.at(means, index, x)
    means /= counts[:, None]
    between = (counts[:, None] * (means - x.mean(axis=0)) ** 2).sum()
    within = ((x - means[index]) ** 2).sum()
    return float(between / within)


def register():
    ped_fast.scorers.register("class_separation", class_separation,
                              source="between-class over within-class variance (ped_fast's example plugin)")
