"""Physical and calendar constants shared by every stage."""
from __future__ import annotations

import pandas as pd

KELVIN = 273.15  # 0 deg C in K
#: Korea Standard Time = UTC+9, no daylight saving (Korea last used DST in 1987-88).
KST_OFFSET = pd.Timedelta(hours=9)
