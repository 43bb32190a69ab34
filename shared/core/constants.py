"""Physical and calendar constants shared by every stage."""
from __future__ import annotations

import pandas as pd

KELVIN = 273.15  # 0 deg C in K
#: Korea Standard Time = UTC+9, no daylight saving (Korea last used DST in 1987-88).
KST_OFFSET = pd.Timedelta(hours=9)

#: KMA 1991-2020 monthly mean TA normals (deg C, Jan..Dec) of six ASOS stations spanning the peninsula's
#: climates (coast, inland, island, mountain): the demo world fits its climate to them, and step01 checks that
#: a month of observations lies near them (shared.io.stations.check_months). Seoul: KMA 1991-2020 monthly
#: normals as quoted in a public code comment (see data/README.md); the other five: best available values
#: (Wikipedia "Climate data for ... (1991-2020 normals)" tables as recalled, checked against the KMA 1991-2020
#: annual means Busan 15.0, Daegu 14.5, Gangneung 13.5, Jeju 16.2, Daegwallyeong 7.1 degC); see data/README.md.
NORMALS_1991_2020 = {
    108: ("Seoul", (-1.9, 0.7, 6.1, 12.6, 17.8, 22.1, 25.3, 26.1, 21.6, 15.0, 7.5, 0.2)),
    159: ("Busan", (3.6, 5.4, 9.2, 13.8, 17.9, 21.1, 24.5, 26.1, 22.7, 18.1, 11.9, 5.7)),
    143: ("Daegu", (0.6, 3.3, 8.5, 14.5, 19.7, 23.4, 26.3, 26.9, 22.1, 16.0, 9.1, 2.4)),
    105: ("Gangneung", (1.2, 2.8, 7.0, 13.0, 17.6, 20.9, 24.6, 25.1, 20.8, 15.6, 9.7, 3.5)),
    184: ("Jeju", (6.1, 7.0, 9.9, 14.3, 18.3, 21.7, 25.9, 27.3, 23.7, 19.0, 13.3, 8.3)),
    100: ("Daegwallyeong", (-7.0, -4.6, 0.4, 7.0, 12.6, 16.5, 19.3, 19.4, 14.8, 8.5, 1.9, -4.7)),
}


#: what TA given as "°C" may really be in, and how each converts to °C: the observation reader names the one
#: that fits a file (shared.io.stations.unit_guess), step01's check the one that fits a station
#: (shared.fusion.qc.rejected_stations)
TA_UNITS = {
    "kelvin": ("K - 273.15", lambda x: x - 273.15),
    "°F": ("(F - 32) / 1.8", lambda x: (x - 32.0) / 1.8),
    "tenths of a °C": ("x / 10", lambda x: x / 10.0),
    "°C with the sign lost": ("-x", lambda x: -x),
}
