"""Gross-error check of the station observations themselves (step01's ``qc:``), before any model exists.

The fusion checks each hour's observations against the model's residuals
(:func:`shared.fusion.analysis.gross_errors`), but only for the observations
it uses, and only once there is a model. A gross error in the training rows
(a stuck sensor, a sign lost, a station's position or clock wrong) would
train that model and enter step03's stored residuals. So step01 checks every
observation first, with the same buddy check
(:func:`shared.fusion.kriging.buddy_check`, leave-one-out kriging) on a
background that needs no model:

* at each image time, each observation is brought to sea level with
  ``lapse_rate_K_per_km`` and the time's median is subtracted; stations on
  sea pixels (buoys) form a group of their own at each time, checked against
  each other, as land stations are against land stations (a buoy's marine
  air is not the coast's: with 20 buoys in the demo world, the pooled check
  rejected an island station's two coldest winter reports, and nothing with
  the groups apart; with 200 errors of 15 K added it found 166 / 168 on land
  and 25 / 32 at sea);
* one unit-sill variogram is fitted to these anomalies pooled over the times
  (at most :data:`VARIOGRAM_TIMES` of them, evenly spread, so a year of
  hourly data does not hold every station pair of every hour in memory);
* at each time with at least :data:`~shared.fusion.kriging.BUDDY_MIN_SITES`
  observations, one that misses what its neighbours krige to by more than
  ``max_z`` robust standard deviations of that time **and** by more than
  ``min_error_K`` is rejected; the worst goes first and the rest are checked
  again, at most 10 % of a time's observations. The kept observations'
  errors are then computed again without the rejected ones, and a rejected
  one's error is against what the kept ones krige to: a bad station does not
  make its neighbours look off (:func:`station_offsets`);
* when the variogram fitted again without the rejected observations differs
  (gross errors in the pool, e.g. a whole station in °F, can make it all
  nugget: every observation is then compared with the time's median, not
  with its neighbours), every time is checked again with it.

Sea-level anomalies vary more between neighbours than the model's residuals
do (coasts, night cold pools), so this check finds only gross errors. On the
demo world (95 stations, 192 times, no gross errors) the largest
leave-one-out error of the 18,078 observations is 10.2 K at 4.0 robust
standard deviations, and the largest z is 5.1: the defaults (6 and 10 K)
reject nothing there. With errors of one size added to 200 random
observations of it (``runs``-style check, both signs), the defaults found
4 of 200 at 8 K, 102 at 10 K, 184 at 12 K, 197 at 15 K and 200 at 20 K, at
every UTC hour, and rejected no other observation.

A second check needs no neighbours: a station that reports exactly one value
for ``stuck_hours`` or longer has a stuck sensor (:func:`stuck_runs`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from shared.core.constants import TA_UNITS
from shared.fusion.analysis import sites
from shared.fusion.kriging import BUDDY_MIN_SITES, Variogram, buddy_check, loo_check, pooled_variogram, simple_krige

#: times pooled for the variogram, evenly spread over the data
VARIOGRAM_TIMES = 200
#: a variogram refitted without the rejected observations whose sill share or range differs from the first by
#: more than this share: the check is done again with it
VARIOGRAM_CHANGE = 0.1
#: km of distance per km of height between two stations (the fusion's default ``elevation_weight``)
ELEVATION_WEIGHT = 200.0
#: step01 warns about a station whose observations are on average this many kelvin off its neighbours
#: (demo world: at most 1.2 K, station 102, a cold-pool valley)
STATION_WARN_K = 3.0
#: ... over at least this many checked times
STATION_MIN_TIMES = 8


@dataclass
class QCConfig:
    """step01's ``qc:``."""

    max_z: float = 6.0  # robust standard deviations of the time's leave-one-out errors (0 = no check)
    min_error_K: float = 10.0  # and at least this many kelvin from what the neighbours krige to
    lapse_rate_K_per_km: float = 6.5  # brings every observation to sea level before comparing
    stuck_hours: float = 12.0  # one value repeated by a station for this long: a stuck sensor (0 = no check)

    def check(self):
        if self.max_z < 0 or self.min_error_K < 0:
            raise ValueError(f"qc.max_z and qc.min_error_K must be >= 0 (max_z 0 = no check), got "
                             f"{self.max_z} and {self.min_error_K}")
        if self.stuck_hours < 0:
            raise ValueError(f"qc.stuck_hours must be >= 0 (0 = no check), got {self.stuck_hours}")
        if not 0 <= self.lapse_rate_K_per_km <= 12:
            raise ValueError(f"qc.lapse_rate_K_per_km must be in [0, 12] K/km, got {self.lapse_rate_K_per_km}")

    @property
    def enabled(self) -> bool:
        return self.max_z > 0


@dataclass
class QCResult:
    rejected: np.ndarray  # (n,) bool: the observations the check leaves out
    error_K: np.ndarray  # (n,) leave-one-out error (obs - what all the others krige to), NaN where not checked
    z: np.ndarray  # (n,) that error in robust standard deviations of its time, NaN where not checked
    variogram: Variogram | None
    times_checked: int


def check_observations(time_key: np.ndarray, x_km: np.ndarray, y_km: np.ndarray, elev_m: np.ndarray,
                       ta_c: np.ndarray, cfg: QCConfig, progress: bool = True,
                       sea: np.ndarray | None = None) -> QCResult:
    """Gross errors among observations ``(n,)``: ``time_key`` groups them by time (one observation per station
    and time), ``x_km, y_km`` on the grid's projection, ``elev_m`` the station's height, ``ta_c`` the value.
    ``sea`` (True for a station on a sea pixel: a buoy) checks each surface against its own stations: the
    marine air a buoy measures can be 10 K warmer than an island's or a coast's in a winter outbreak (demo
    world with buoys: an island station's two coldest reports were rejected against the buoys around it)."""
    n = len(ta_c)
    rejected, err, z = np.zeros(n, bool), np.full(n, np.nan), np.full(n, np.nan)
    if not cfg.enabled or n == 0:
        return QCResult(rejected, err, z, None, 0)
    elev = np.nan_to_num(np.asarray(elev_m, np.float64), nan=0.0)
    a = np.asarray(ta_c, np.float64) + cfg.lapse_rate_K_per_km * elev / 1000.0
    xyz = sites(x_km, y_km, elev, ELEVATION_WEIGHT)
    _, inv = np.unique(np.asarray(time_key), return_inverse=True)
    if sea is not None:  # one group per time and surface
        inv = 2 * inv + np.asarray(sea, bool)
    order = np.argsort(inv, kind="stable")
    groups = [g for g in np.split(order, np.flatnonzero(np.diff(inv[order])) + 1) if len(g) >= BUDDY_MIN_SITES]
    anomaly = np.empty(n)
    for g in groups:
        anomaly[g] = a[g] - np.median(a[g])
    sample = groups[::max(1, len(groups) // VARIOGRAM_TIMES)]
    vg = pooled_variogram([(xyz[g], anomaly[g]) for g in sample])
    for check in ("first", "again"):
        for g in tqdm(groups, desc=f"step01 gross-error check{' (again)' if check == 'again' else ''}", unit="time",
                      leave=False, disable=not progress or len(groups) < 500):
            err[g], z[g] = loo_check(xyz[g], anomaly[g], vg)
            rejected[g] = False
            if np.any((np.abs(err[g]) > cfg.min_error_K) & (np.abs(z[g]) > cfg.max_z)):  # buddy_check's first pass
                bad = buddy_check(xyz[g], anomaly[g], vg, cfg.max_z, cfg.min_error_K)
                rejected[g] = bad
                if bad.any():  # the errors without the rejected: theirs against the kept ones, the kept ones' own
                    keep, out = g[~bad], g[bad]
                    err[out] = anomaly[out] - simple_krige(xyz[keep], anomaly[keep], xyz[out], vg)[0]
                    err[keep], z[keep] = loo_check(xyz[keep], anomaly[keep], vg)
        if check == "again" or not rejected.any():
            break
        # the variogram without what was rejected: gross errors in the pool (a whole station in °F) can make it
        # all nugget, which no longer compares an observation with its neighbours; if it changes, check again
        clean = pooled_variogram([(xyz[g[~rejected[g]]], anomaly[g[~rejected[g]]]) for g in sample])
        if abs(clean.psill - vg.psill) <= VARIOGRAM_CHANGE * max(vg.psill, 1e-9) and \
                abs(clean.range_km - vg.range_km) <= VARIOGRAM_CHANGE * vg.range_km:
            break
        vg = clean
    return QCResult(rejected, err, z, vg, len(np.unique(np.asarray(time_key)[[g[0] for g in groups]])))


def station_offsets(stn_id: np.ndarray, error_K: np.ndarray, rejected: np.ndarray,
                    min_times: int = STATION_MIN_TIMES) -> pd.DataFrame:
    """Each station's mean leave-one-out error over its checked, kept observations (``stn_id, mean_error_K,
    times``), largest magnitude first, for stations checked at ``min_times`` times or more. A station that
    reads several kelvin off its neighbours at most times (after the lapse rate) more likely has a wrong
    elevation or position in the station table than a bad sensor at every hour."""
    use = np.isfinite(error_K) & ~np.asarray(rejected, bool)
    t = (pd.DataFrame({"stn_id": np.asarray(stn_id)[use], "e": np.asarray(error_K)[use]})
         .groupby("stn_id")["e"].agg(["mean", "size"]).reset_index())
    t = t[t["size"] >= min_times].rename(columns={"mean": "mean_error_K", "size": "times"})
    return t.reindex(t["mean_error_K"].abs().sort_values(ascending=False).index).reset_index(drop=True)


#: a station with at least this many observations rejected, and most of its checked ones, is summed up in one
#: line, with what its values would be in a wrong unit (:func:`rejected_stations`)
STATION_REJECT_MIN = 8


def rejected_stations(stn_id: np.ndarray, ta_c: np.ndarray, error_K: np.ndarray, rejected: np.ndarray,
                      min_rejected: int | None = None) -> list[dict]:
    """The stations whose observations were mostly rejected (``min_rejected``, default
    :data:`STATION_REJECT_MIN`, or more, and more than half of their checked ones): ``stn_id, rejected,
    checked, mean_error_K`` and, when one of :data:`~shared.core.constants.TA_UNITS` brings the rejected values
    to what their neighbours krige to (RMS within 2 K and a fifth of the error), ``unit`` and ``unit_rms_K``. A whole station in °F or in tenths of a degree fails at most times; one
    line about it says more than a warning per observation."""
    min_rejected = STATION_REJECT_MIN if min_rejected is None else min_rejected
    stn_id, ta = np.asarray(stn_id), np.asarray(ta_c, np.float64)
    err, rej = np.asarray(error_K, np.float64), np.asarray(rejected, bool)
    checked = np.isfinite(err)
    out = []
    for s in np.unique(stn_id[rej]):
        m = stn_id == s
        r, c = int((m & rej).sum()), int((m & checked).sum())
        if r < min_rejected or 2 * r <= c:
            continue
        x, e = ta[m & rej], err[m & rej]
        row = {"stn_id": int(s), "rejected": r, "checked": c, "mean_error_K": round(float(e.mean()), 2)}
        neighbours = x - e  # what the kept observations krige to, in °C at the station's height
        rms = float(np.sqrt(np.mean(e ** 2)))
        fits = {u: float(np.sqrt(np.mean((f(x) - neighbours) ** 2))) for u, (_, f) in TA_UNITS.items()}
        unit = min(fits, key=fits.get)
        if fits[unit] < min(2.0, 0.2 * rms):
            row.update(unit=f"{unit} ({TA_UNITS[unit][0]})", unit_rms_K=round(fits[unit], 2))
        out.append(row)
    return out


#: consecutive reports of one station farther apart than this do not continue a run of one value
STUCK_MAX_GAP_H = 6.0


def stuck_runs(stn_id: np.ndarray, time: np.ndarray, ta_c: np.ndarray, hours: float) -> tuple[np.ndarray, pd.DataFrame]:
    """A stuck sensor: one station reporting exactly the same value for ``hours`` or longer (consecutive reports
    at most :data:`STUCK_MAX_GAP_H` apart). Returns ``(n,)`` True for every report of such a run but its first
    (which may still be the last good value), and the runs (``stn_id, start, end, value, reports``). On the
    demo world the longest run of one value is 6 h (3 three-hourly reports; nights and fog), so the default
    12 h flags nothing there; ``hours`` 0 checks nothing."""
    n = len(ta_c)
    flag = np.zeros(n, bool)
    cols = ["stn_id", "start", "end", "value", "reports"]
    if hours <= 0 or n == 0:
        return flag, pd.DataFrame(columns=cols)
    order = np.lexsort((np.asarray(time), np.asarray(stn_id)))
    s, t, v = np.asarray(stn_id)[order], pd.DatetimeIndex(np.asarray(time)[order]), np.asarray(ta_c, np.float64)[order]
    gap_h = np.r_[np.inf, np.diff(t.asi8) / 3.6e12]
    cont = np.r_[False, (s[1:] == s[:-1]) & (v[1:] == v[:-1])] & (gap_h <= STUCK_MAX_GAP_H)
    run = np.cumsum(~cont) - 1  # each report's run of one value
    start = np.flatnonzero(~cont)
    end = np.r_[start[1:], n] - 1
    span_h = (t.asi8[end] - t.asi8[start]) / 3.6e12
    long = np.flatnonzero(span_h >= hours)
    flag[order[(span_h >= hours)[run] & cont]] = True
    runs = pd.DataFrame({"stn_id": s[start[long]].astype(np.int64), "start": t[start[long]], "end": t[end[long]],
                         "value": v[start[long]], "reports": end[long] - start[long] + 1}, columns=cols)
    return flag, runs
