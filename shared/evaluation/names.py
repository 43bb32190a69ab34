"""The names step05 gives its two TA-2D predictions and its distance bands in ``metrics.json``, the CSVs and the
figures (a light module: the figures import it without torch)."""

import numpy as np

#: The satellite model alone (``t2m_model`` on the maps).
MODEL = "model"
#: The model fused with the same-hour observations of the fusion (train + val) stations, at the scored stations.
ANALYSIS = "analysis"

#: Distance bands (km to the nearest fusion station of the hour, or to the stations the model learnt from) of the
#: map-vs-truth scores and of the test stations' errors.
DISTANCE_BANDS_KM = ((0, 25), (25, 50), (50, 100), (100, 200), (200, None))


def band_name(lo, hi) -> str:
    return f"{lo}_{hi}km" if hi is not None else f"over_{lo}km"


def band_label(name: str) -> str:
    """A band's name for people: ``25_50km`` -> ``25-50 km``, ``over_200km`` -> ``> 200 km``."""
    core = name.removesuffix("km")
    return f"> {core.removeprefix('over_')} km" if core.startswith("over_") else core.replace("_", "-") + " km"


def distance_bands(km: np.ndarray) -> np.ndarray:
    """The :data:`DISTANCE_BANDS_KM` name (:func:`band_name`) of each distance (km); "" where it is NaN or inf."""
    km = np.asarray(km, np.float64)
    out = np.full(km.shape, "", dtype=object)
    for lo, hi in DISTANCE_BANDS_KM:
        out[(km >= lo) & (km < (np.inf if hi is None else hi))] = band_name(lo, hi)
    return out
