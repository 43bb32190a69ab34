"""The embedded demo world: a synthetic GK-2A-like world on the real KO grid.

No real GK-2A data can be downloaded here, so this module writes the full
raw-data contract (:mod:`shared.io.raw`, :mod:`shared.io.stations`) from a small physical model:

* real land/sea (``global_land_mask``), synthetic terrain (Taebaek/Sobaek-like
  ridges, Halla on Jeju, fractal hills) adjusted to the ASOS station
  elevations, IGBP land cover;
* 2 m air temperature = seasonal climatology (latitude, land/sea) - lapse rate
  x DEM + diurnal cycle (bigger inland, damped by clouds and sea) + moving
  synoptic anomalies + local effects (urban heat island, cold-air pooling,
  small unobservable texture);
* skin temperature = air temperature + solar heating by day (land cover,
  slope facing the sun, clouds) - radiative cooling at night; sea surface
  temperature leads/lags the air by season;
* clouds (moving, fractal, 20-60 % cover) with cold tops and bright tops;
* BT per AMI channel from skin temperature, emissivity, water vapour (path
  length from the real GK-2A view geometry) and clouds; RF per channel from
  surface/cloud/snow reflectance x cos(SZA), 0 at night; SZA from
  :func:`shared.geo.solar.solar_zenith`;
* station TA = true TA at the station pixel - lapse rate x (station elevation
  - pixel DEM) + N(0, sigma) noise, rounded to 0.1 degC, ~1 % missing.

Everything is a deterministic function of (preset, seed). All spatial fields
are functions of absolute KO pixel position, so the ``tiny`` preset is an
exact window of the ``demo`` world at the same times.

    python -m shared.ingest.demo_world --preset demo|tiny [--out data/raw] [--seed 0] [--force]

or from Python: ``generate(out_dir, preset="tiny", seed=0, force=False) -> dict``.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.core.records import write_csv, write_json
from shared.ingest.demo.observations import observe, realism_report, realism_stats
from shared.ingest.demo.tables import LAPSE, NOISE_SIGMA_K, VERSION
from shared.ingest.demo.weather import simulate
from shared.ingest.demo.world import PRESETS, World, _preset, build_world
from shared.io.raw import (
    COMPLEVEL,
    FILL_I16,
    GRID_MAPPING,
    PACKING,
    nc_header,
    packed_var,
    sat_path,
    write_nc,
    write_stack,
)
from shared.io.raw import write_static as write_static_nc

MARKER = "DEMO_WORLD.json"
#: Paths inside the output folder that the generator owns (removed on rebuild).
MANAGED = ("static.nc", "stations.csv", "truth.json", MARKER, "sat", "ta_obs", "truth", "realism.json")


# --------------------------------------------------------------------------- netCDF writing
_SOURCE = f"TA-2D embedded demo world v{VERSION} (synthetic, shared/ingest/demo_world.py)"
_DEMO_ATTRS = {"institution": "TA-2D", "platform": "GK-2A (synthetic)", "area": "ko020lc"}


def write_sat(raw: Path, W: World, t: pd.Timestamp, F: dict) -> list[Path]:
    """The bt/rf/sza stacks of one time (the raw-data contract, :mod:`shared.io.raw`) and its true field."""
    g = W.grid
    stamp = f"{t:%Y%m%d%H%M}"
    out = []
    for kind in ("bt", "rf", "sza"):
        p = sat_path(raw, kind, t)
        title = (f"GK-2A AMI {kind.upper()} stack (synthetic demo world)" if kind != "sza"
                 else "solar zenith angle (synthetic demo world)")
        write_stack(p, kind, F[kind], g, t, _SOURCE, title, _DEMO_ATTRS)
        out.append(p)

    def fill_truth(ds):
        nc_header(ds, g, "true 2 m air temperature of the demo world", _SOURCE, t, _DEMO_ATTRS)
        h = ds.createVariable("height", "f4", ())
        h.setncatts({"standard_name": "height", "units": "m", "positive": "up", "axis": "Z"})
        h[...] = 2.0
        packed_var(ds, "t2m", ("y", "x"), F["t2m"], "t2m",
                   {"standard_name": "air_temperature", "long_name": "true 2 m air temperature", "units": "K",
                    "coordinates": "time height"}, (g.ny, g.nx))
        v = ds.createVariable("cloud_mask", "u1", ("y", "x"), zlib=True, complevel=COMPLEVEL, shuffle=True,
                              chunksizes=(g.ny, g.nx))
        v.setncatts({"long_name": "cloud present in the pixel (cloud optical thickness > 0)", "flag_values": np.array([0, 1], "u1"),
                     "flag_meanings": "clear cloudy", "grid_mapping": GRID_MAPPING, "coordinates": "time"})
        v[...] = F["cloud"].astype(np.uint8)
    p = raw / "truth" / f"ta_true_{stamp}.nc"
    write_nc(p, fill_truth)
    out.append(p)
    return out


def write_static(raw: Path, W: World) -> Path:
    p = raw / "static.nc"
    attrs = {**_DEMO_ATTRS, "landcover_source": "synthetic IGBP-like classes (rules on terrain, coast, cities)",
             "lsmask_source": "global_land_mask (1 km) at pixel centres; ASOS station pixels forced to land"}
    write_static_nc(p, W.grid, W.lat, W.lon, W.dem, W.land, W.landcover,
                    "static layers of the TA-2D demo world (KO grid)", _SOURCE, attrs)
    return p


# --------------------------------------------------------------------------- worker
_W: World | None = None
_RAW: Path | None = None
_LIMITS = None


def _init_worker(preset: str, seed: int, noise_sigma: float, raw: str, aws: int = 0, buoys: int = 0) -> None:
    global _W, _RAW
    if _W is None or (_W.preset.name, _W.seed, _W.noise_sigma, _W.extra_sites) != (preset, seed, noise_sigma, (aws, buoys)):
        _W = build_world(preset, seed, noise_sigma, aws, buoys)  # spawn start method: rebuild (deterministic)
    _RAW = Path(raw)
    global _LIMITS
    _LIMITS = _one_thread_blas()


def _one_thread_blas():
    """Workers are processes: keep BLAS single-threaded so they do not fight for the cores."""
    try:

        return threadpool_limits(1)
    except Exception:  # noqa: BLE001 - only an accelerator
        return None


def _one_time(t: pd.Timestamp) -> tuple[np.ndarray, float, float, dict]:
    W = _W
    F = simulate(W, t)
    write_sat(_RAW, W, t, F)
    rr, cc = W.stations["row"].to_numpy(), W.stations["col"].to_numpy()
    return F["t2m"][rr, cc].astype(np.float64), float(F["cloud"].mean()), F["cf"], realism_stats(W, t, F)


# --------------------------------------------------------------------------- driver
def _du_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def _read_marker(raw: Path) -> dict | None:
    try:
        return json.loads((raw / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _n_net(W: World, network: str) -> int:
    return int((W.stations["network"] == network).sum())


def _params(preset: str, seed: int, noise_sigma: float, aws: int = 0, buoys: int = 0) -> dict:
    p = {"preset": preset, "seed": int(seed), "noise_sigma_k": float(noise_sigma), "version": VERSION}
    # an ASOS-only world keeps its marker
    return {**p, **({"aws_stations": int(aws)} if aws else {}), **({"buoy_stations": int(buoys)} if buoys else {})}


def _is_complete(raw: Path, marker: dict) -> bool:
    if marker.get("status") != "complete":
        return False
    n = marker.get("n_timestamps", -1)
    if not (raw / "static.nc").is_file() or not (raw / "truth.json").is_file():
        return False
    return all(len(list((raw / "sat").rglob(f"gk2a_{k}_*.nc"))) == n for k in ("bt", "rf", "sza"))


#: the folders of MANAGED whose files the marker lists (a regeneration deletes them)
GENERATED_DIRS = ("sat", "ta_obs", "truth")
#: the names the generator gives, for a marker written before it listed its files
_GENERATED = re.compile(r"^(sat/\d{4}/\d{2}/\d{2}/gk2a_(bt|rf|sza)_\d{12}\.nc|ta_obs/[a-z]+_ta_\d{6}\.csv|"
                        r"truth/(station_truth\.csv|ta_true_\d{12}\.nc))$")


def _generated_files(raw: Path) -> list[str]:
    """The files under :data:`GENERATED_DIRS`, relative to ``raw`` (POSIX), sorted; hidden ones (temporary files,
    a desktop's own) left out."""
    return sorted(f.relative_to(raw).as_posix() for d in GENERATED_DIRS if (raw / d).is_dir()
                  for f in (raw / d).rglob("*") if f.is_file() and not f.name.startswith("."))  # .tmp-*, .DS_Store


def _foreign_files(raw: Path, marker: dict) -> list[str]:
    """Files under the generated folders that the generator did not write (data a user added, e.g. a day of
    images or a station file): the marker's list, or the generator's names and image count for an older marker."""
    present = _generated_files(raw)
    if isinstance(marker.get("files"), list):
        written = set(marker["files"])
        return [f for f in present if f not in written]
    out = [f for f in present if not _GENERATED.match(f)]
    n_bt, n = sum(f.startswith("sat/") and "/gk2a_bt_" in f for f in present), marker.get("n_timestamps")
    if isinstance(n, int) and n_bt > n:
        out.append(f"{n_bt - n} image time(s) more than the demo world's {n} under sat/")
    return out


def _rebuild_reason(raw: Path, marker: dict, params: dict, force: bool) -> str:
    """Why the demo world in ``raw`` is generated again: --force, other parameters, or files missing."""
    if force:
        return "--force"
    old = marker.get("params") if isinstance(marker.get("params"), dict) else {}
    if old != params:
        diff = [k for k in sorted(set(old) | set(params)) if old.get(k) != params.get(k)]
        return "other parameters (" + ", ".join(f"{k}: {old.get(k)} -> {params.get(k)}" for k in diff) + ")"
    if marker.get("status") != "complete":
        return "an unfinished generation"
    n = marker.get("n_timestamps", -1)
    have = min(len(list((raw / "sat").rglob(f"gk2a_{k}_*.nc"))) for k in ("bt", "rf", "sza"))
    missing = [f for f in ("static.nc", "truth.json") if not (raw / f).is_file()]
    what = ([f"{have} of {n} image times"] if have != n else []) + [f"no {f}" for f in missing]
    return f"incomplete ({', '.join(what)})" if what else "truth.json unreadable"


def _prepare_out(raw: Path, params: dict, force: bool) -> dict | None:
    """Decide what to do with an existing folder. Returns the old truth summary
    when the same demo world is already complete (nothing to do)."""
    if not raw.exists():
        return None
    if not raw.is_dir():
        raise UserError(f"{raw} exists and is not a folder; pass --out to another path")
    entries = [e for e in raw.iterdir() if not e.name.startswith(".tmp-")]
    marker = _read_marker(raw)
    if marker is None and entries and not force:
        raise UserError(
            f"{raw} is not empty and is not a demo world (no {MARKER}); it may hold real data. "
            f"Refusing to overwrite it: pass --out to another folder, or --force to replace "
            f"its {', '.join(MANAGED[:3])}, sat/, ta_obs/, truth/"
        )
    if marker is not None and not force and marker.get("params") == params and _is_complete(raw, marker):
        try:
            return json.loads((raw / "truth.json").read_text())
        except (OSError, ValueError):
            pass
    if marker is not None and not force and (foreign := _foreign_files(raw, marker)):  # about to be rebuilt
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise UserError(f"{raw} holds files the demo world generator did not write ({', '.join(foreign[:3])}{more}); "
                        "regenerating it would delete them: move them to a raw folder of their own (and point "
                        "the steps' raw_dir / obs_dir at it), or pass --force to delete them")
    if marker is not None:  # say why a demo world is built again
        print(f"demo world in {raw}: {_rebuild_reason(raw, marker, params, force)}; generating it again", flush=True)
    for name in MANAGED:
        p = raw / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def generate(out_dir: str | Path | None = None, preset: str = "tiny", seed: int = 0, force: bool = False,
             noise_sigma: float = NOISE_SIGMA_K, workers: int | None = None, progress: bool = True,
             aws: int = 0, buoys: int = 0) -> dict:
    """Write a demo world into ``out_dir`` (default ``data/raw``) and return its summary.

    ``aws`` adds that many synthetic AWS-like stations to the ASOS ones (see
    :func:`shared.ingest.demo.world.aws_sites`); their reports go to
    ``ta_obs/aws_ta_YYYYMM.csv``. ``buoys`` adds that many synthetic moored buoys at
    sea (:func:`shared.ingest.demo.world.buoy_sites`), reporting to
    ``ta_obs/buoy_ta_YYYYMM.csv``. The true fields and the ASOS reports are the
    same as without them.

    The summary is the content of ``truth.json`` plus ``skipped`` (True when
    the same world was already there) and ``seconds``. Raises
    :class:`UserError` if ``out_dir`` holds something that is not a demo
    world and ``force`` is False.
    """

    t_start = time.time()
    P = _preset(preset)
    if not (noise_sigma >= 0 and math.isfinite(noise_sigma)):  # NaN fails both comparisons: test it too
        raise UserError(f"noise sigma must be a finite number >= 0 K, got {noise_sigma}")
    if aws < 0:
        raise UserError(f"the number of AWS stations must be >= 0, got {aws}")
    if buoys < 0:
        raise UserError(f"the number of buoys must be >= 0, got {buoys}")
    raw = Path(out_dir) if out_dir is not None else Path("data/raw")
    if not raw.is_absolute():
        raw = REPO_ROOT / raw
    params = _params(P.name, seed, noise_sigma, aws, buoys)
    old = _prepare_out(raw, params, force)
    if old is not None:
        old = {**old, "skipped": True, "seconds": round(time.time() - t_start, 2)}
        if progress:
            print(f"demo world '{P.name}' (seed {seed}) is already in {raw}: nothing to do (--force rebuilds it)")
        return old
    raw.mkdir(parents=True, exist_ok=True)
    write_json(raw / MARKER, {"generator": "shared.ingest.demo_world", "params": params, "status": "incomplete",
                              "n_timestamps": len(P.times)})

    global _W, _RAW
    W = build_world(P, seed, noise_sigma, aws, buoys)
    _W, _RAW = W, raw
    write_static(raw, W)
    st = W.stations
    write_csv(raw / "stations.csv", st[["stn_id", "name", "lat", "lon", "elev_m"]])

    times = list(P.times)
    nproc = workers if workers is not None else min(os.cpu_count() or 1, 8)
    nproc = max(1, min(nproc, len(times)))
    bar = _progress(len(times), progress, f"demo world {P.name}")
    results = []
    if nproc == 1:
        for t in times:
            results.append(_one_time(t))
            bar.update()
    else:

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(nproc, initializer=_init_worker, initargs=(P.name, int(seed), float(noise_sigma), str(raw), int(aws), int(buoys))) as pool:
            for res in pool.imap(_one_time, times, chunksize=1):
                results.append(res)
                bar.update()
    bar.close()

    # ---- station observations
    true_k = np.stack([r[0] for r in results])  # (T, S)
    df, elev_eff, noise_floor, noise_floor_elev, clim_rmse = observe(W, times, true_k, noise_sigma, seed)
    T, S = true_k.shape
    ok = df["ta_c"].notna()
    (raw / "ta_obs").mkdir(exist_ok=True)
    fmt = {"date_format": "%Y-%m-%d %H:%M", "float_format": "%.1f", "na_rep": ""}
    network = df["stn_id"].map(W.stations.set_index("stn_id")["network"]).str.lower()
    for (net, yy, mm), part in df.groupby([network, df["time_utc"].dt.year, df["month"]]):
        write_csv(raw / "ta_obs" / f"{net}_ta_{yy:04d}{mm:02d}.csv", part[["stn_id", "time_utc", "ta_c"]], **fmt)
    truth_tab = df[["stn_id", "time_utc", "ta_true_c"]].copy()
    truth_tab["elev_effect_k"] = np.tile(elev_eff, T)
    write_csv(raw / "truth" / "station_truth.csv", truth_tab, date_format="%Y-%m-%d %H:%M", float_format="%.3f")

    cover = np.array([r[1] for r in results])
    summary = {
        "generator": "shared.ingest.demo_world", "version": VERSION, "preset": P.name, "seed": int(seed),
        "grid": W.grid.attrs(), "n_timestamps": T, "first_time_utc": f"{times[0]:%Y-%m-%d %H:%M}",
        "last_time_utc": f"{times[-1]:%Y-%m-%d %H:%M}", "months": sorted({t.month for t in times}),
        "n_stations": S, "n_aws_stations": _n_net(W, "AWS"), "n_buoy_stations": _n_net(W, "BUOY"), "n_samples": int(ok.sum()), "n_missing": int((~ok).sum()),
        "station_noise_sigma_k": float(noise_sigma), "lapse_rate_k_per_m": LAPSE,
        "elevation_mismatch_rmse_k": float(np.sqrt(np.mean(elev_eff**2))),
        "noise_floor_rmse_k": round(noise_floor, 4),
        "noise_floor_note": "RMSE of station obs vs true t2m at the station pixel over all samples (noise + elevation mismatch + 0.1 C rounding): what a perfect map scores",
        "noise_floor_elev_corrected_rmse_k": round(noise_floor_elev, 4),
        "noise_floor_elev_corrected_note": "RMSE of station obs vs the true t2m at the station pixel corrected to the station elevation with lapse_rate_k_per_m (what is left: noise + 0.1 C rounding)",
        "climatology_rmse_k": round(clim_rmse, 4),
        "climatology_note": "station TA mean by (UTC hour, month) over all stations, scored in-sample on all samples",
        "cloud_fraction_mean": round(float(cover.mean()), 4),
        "cloud_fraction_range": [round(float(cover.min()), 4), round(float(cover.max()), 4)],
        "packing": {k: {"scale_factor": s, "add_offset": o, "dtype": "int16", "_FillValue": int(FILL_I16)} for k, (s, o) in PACKING.items()},
    }
    realism = realism_report(W, times, results, true_k, elev_eff, df, noise_floor, noise_floor_elev)
    write_json(raw / "realism.json", realism)
    summary["realism"] = realism["summary"]
    summary["disk_mb"] = round(_du_mb(raw), 1)
    summary["seconds"] = round(time.time() - t_start, 1)
    write_json(raw / "truth.json", summary)
    write_json(raw / MARKER, {"generator": "shared.ingest.demo_world", "params": params, "status": "complete",
                              "n_timestamps": T, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "files": _generated_files(raw)})
    summary["skipped"] = False
    if progress:
        print(
            f"demo world '{P.name}' seed {seed} -> {raw}: {T} timestamps, {summary['n_samples']} samples, "
            f"{summary['disk_mb']:.0f} MB, {summary['seconds']:.1f} s, climatology RMSE {clim_rmse:.2f} K, "
            f"noise floor {noise_floor:.2f} K"
        )
    return summary


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.ingest.demo_world", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="demo: full 900x900 KO grid, 95 ASOS stations, 192 times over a year; tiny: 128x128 window, 8 times")
    p.add_argument("--out", type=Path, default=Path("data/raw"), help="output folder (relative to the repository root; default data/raw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-sigma", type=float, default=NOISE_SIGMA_K, help="station TA noise sigma in K (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--aws", type=int, default=0, metavar="N",
                   help="add N synthetic AWS-like stations (South Korean land, >= 5 km apart) to the ASOS ones; "
                        "the true fields stay the same (default 0)")
    p.add_argument("--buoys", type=int, default=0, metavar="N",
                   help="add N synthetic moored buoys at sea (10-80 km offshore, >= 40 km apart, within 120 km of an "
                        "ASOS station); the true fields stay the same (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if the same world is there; overwrite a non-demo folder")
    a = p.parse_args(argv)
    generate(a.out, preset=a.preset, seed=a.seed, force=a.force, noise_sigma=a.noise_sigma, workers=a.workers, aws=a.aws,
             buoys=a.buoys)
    return 0


if __name__ == "__main__":
    from shared.core.cli import run_main

    run_main(main)
