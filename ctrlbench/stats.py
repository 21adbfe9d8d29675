"""The one mean +/- std used for every spread over images (docs/metrics.md).

The std is the sample standard deviation, ddof=1 (pandas' default; numpy's default is
ddof=0). Papers report "mean +/- std over images" without saying which; ddof=1 estimates
the spread of the population the images are drawn from. The summary table (every
per-image metric, `mean` and `best_of_n` rows), hence the paper tables and the HTML page
that copy it, and the IoU log line all go through `mean_std`.
"""

from __future__ import annotations

import numpy as np

STD_DDOF = 1


def mean_std(values) -> tuple[float, float]:
    """(mean, std with ddof=STD_DDOF) of a 1-D sequence; mean NaN for no values, std NaN
    for fewer than two (a sample std of one value is undefined, not 0)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    mean = float(array.mean()) if array.size else float("nan")
    std = float(array.std(ddof=STD_DDOF)) if array.size > STD_DDOF else float("nan")
    return mean, std
