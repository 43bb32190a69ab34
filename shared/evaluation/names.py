"""The names step05 gives its two TA-2D predictions in ``metrics.json``, the CSVs and the figures (a light module:
the figures import it without torch)."""

#: The satellite model alone (``t2m_model`` on the maps).
MODEL = "model"
#: The model fused with the same-hour observations of the fusion (train + val) stations, at the scored stations.
ANALYSIS = "analysis"
