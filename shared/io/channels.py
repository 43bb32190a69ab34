"""What every band, channel and class index means: declared once, used everywhere.

GK-2A AMI bands (../shared/GK2A.md), in the order of the raw stacks
(``bt (channel=10, y, x)``, ``rf (channel=6, y, x)``), with their central
wavelengths in µm; the 19 channels of every patch tensor ``x (N, 19, P, P)``;
IGBP land-cover classes 1..17 of ``static.nc``. Indices are derived from the
names, so reordering a list cannot leave a stale index behind.
"""
from __future__ import annotations

BT_CHANNELS = ["SW038", "WV063", "WV069", "WV073", "IR087", "IR096", "IR105", "IR112", "IR123", "IR133"]
RF_CHANNELS = ["VI004", "VI005", "VI006", "VI008", "NR013", "NR016"]
BT_WAVES_UM = [3.83, 6.21, 6.94, 7.33, 8.59, 9.62, 10.35, 11.23, 12.36, 13.29]
RF_WAVES_UM = [0.47, 0.51, 0.64, 0.86, 1.38, 1.61]
SPECTRAL_CHANNELS = BT_CHANNELS + RF_CHANNELS
#: Channels that are not radiances: to the head as statistics, or to the encoder with pseudo-wavelengths.
AUX_CHANNELS = ["SZA", "DEM", "LSMASK"]
#: Channel order of every patch tensor ``x (N, 19, P, P)``.
PATCH_CHANNELS = SPECTRAL_CHANNELS + AUX_CHANNELS
N_BT, N_RF = len(BT_CHANNELS), len(RF_CHANNELS)
N_CHANNELS = len(PATCH_CHANNELS)  # 19
SZA_CH, DEM_CH, LSMASK_CH = (PATCH_CHANNELS.index(c) for c in AUX_CHANNELS)
IR105_CH = PATCH_CHANNELS.index("IR105")

#: IGBP land-cover classes 1..17 (index + 1 = class code); 0/255 = unclassified.
IGBP_CLASSES = [
    "evergreen_needleleaf_forest", "evergreen_broadleaf_forest", "deciduous_needleleaf_forest",
    "deciduous_broadleaf_forest", "mixed_forest", "closed_shrublands", "open_shrublands", "woody_savannas",
    "savannas", "grasslands", "permanent_wetlands", "croplands", "urban_and_built_up", "cropland_natural_vegetation_mosaic",
    "snow_and_ice", "barren", "water",
]
WATER = IGBP_CLASSES.index("water") + 1  # 17
N_LANDCOVER = len(IGBP_CLASSES)  # 17
GSD_M = 2000.0  # pixel spacing of the 2 km KO grid

#: Per-pixel location descriptors from static.nc, in the order of every ``site (N, K)`` chunk tensor
#: (definitions and units: :mod:`shared.features.site`, which computes them).
SITE_FEATURES = ("coast_dist", "elev_s10", "elev_s50", "tpi_10", "tpi_50", "land_frac_10", "land_frac_50")
N_SITE = len(SITE_FEATURES)
