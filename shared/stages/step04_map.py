"""step04_infer_map: trained model + same-hour observations -> one 2 m TA analysis (CF netCDF + PNG) per time.

Loads ``weights/best.pt`` alone (model config and normalisation statistics are
inside), reads each time's BT/RF/SZA stacks and predicts every pixel of the
grid from its P x P window, with its standard error (edges reflect-padded, see
:mod:`shared.mapping.predict`). With ``fusion.enabled`` (default) the
observations of the fusion stations (train + val) at that hour correct the
model field (:mod:`shared.mapping.analysis`, :mod:`shared.fusion.analysis`):
``t2m`` is the analysis, ``t2m_model`` the satellite model alone, both with
standard errors. Writes ``output_dir/ta_map_YYYYMMDDhhmm.nc`` + ``.png``
(layout: :mod:`shared.io.maps`), ``map_at_stations.csv`` and ``maps.json``.

Many times: ``torchrun --nproc_per_node=N step04_infer_map/run.py`` splits the
times between N processes (each writes its own maps); ``num_threads`` sets
the threads of each. A rerun after an interruption keeps maps already complete; a rerun with other fusion or
quicklook settings takes each existing map's model field (same checkpoint, images, precision, grid, kind of device
and :data:`MODEL_FIELD_VERSION`) and redoes
the fusion and the quicklook alone (``skip_existing``; ``--force`` remakes all).
"""
from __future__ import annotations

import datetime
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import netCDF4
import numpy as np
import pandas as pd
from tqdm import tqdm

from shared.core.config import repo_relative, resolve_path
from shared.core.constants import KELVIN
from shared.core.device import check_device_name
from shared.core.errors import UserError, require_file, rerun
from shared.core.records import fingerprint, write_csv, write_json
from shared.core.runner import Context, Result, Stage
from shared.core.threads import set_cpu_threads
from shared.features.site import site_fields
from shared.fusion.analysis import FusionConfig, variogram_warning
from shared.io.index import learnt_station_ids
from shared.io.maps import (
    MapLayers,
    checkpoint_fingerprint,
    inputs_fingerprint,
    inputs_stat_fingerprint,
    map_dataset,
    map_name,
    read_map,
    write_map,
)
from shared.io.raw import Static, read_frame, read_static
from shared.io.stations import read_stations
from shared.mapping.analysis import (
    TimeSources,
    fuse_map,
    fusion_observations,
    obs_digest,
    run_variogram,
    split_names,
    stored_variogram,
    time_sources,
)
from shared.mapping.predict import (
    MapResult,
    check_region,
    load_predictor,
    peak_rss_bytes,
    predict_map,
    predict_pixels,
    release_free_heap,
)
from shared.mapping.quicklook import quicklook, station_distance_km
from shared.mapping.times import select_times
from shared.models.checkpoint import step03_upstream

STEP = "step04_infer_map"
#: Bump when the variables of a map file change, so maps of an older layout are remade.
# 2: t2m (time=1, y, x) + distance_to_station; 3: analysis, model, standard errors, fusion stations;
# 4: distance_to_station (time=1, y, x), so that a season of maps stacks (shared.io.maps.open_maps)
MAP_LAYOUT = 4
#: Bump when the code that computes the model field (windows, features, the model's standard error) changes its
#: values for the same checkpoint and images: maps made before are then predicted again, neither kept nor reused.
MODEL_FIELD_VERSION = 2  # 2: the patch embedding folded into one product at inference (shared/models/ta.py)
#: How a map names its checkpoint and images (``checkpoint_fingerprint``, ``inputs_fingerprint``): 2 = by their
#: bytes (shared/io/maps.py), 1 = by size and time. Part of the step's version, so that maps of another kind are
#: made again once rather than left out by step05 as another checkpoint's.
FINGERPRINTS = 2


#: The time forms a config may give: ISO 8601 (date, then hh:mm[:ss] after a space or T, then Z or an offset such
#: as +09:00) or GK-2A's file-name form YYYYMMDDhhmm. Others (08/07/2023: 8 July or 7 August?) are refused.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)?|\d{12}")


def utc_text(v, key: str) -> str:
    """A configured time as ``YYYY-MM-DD hh:mm`` UTC: a YAML date or datetime (taken as UTC), or a string of
    :data:`_ISO_TIME`'s forms; a time with an offset (``2023-07-08 09:00+09:00``, KST) is converted to UTC."""
    bad = f"{key}: cannot read {v!r} as a time; use 'YYYY-MM-DD hh:mm' (UTC), or add another zone's offset " \
          "('2023-07-08 09:00+09:00' is 00:00 UTC)"
    s = str(v).strip() if isinstance(v, (str, int)) and not isinstance(v, bool) else v  # YAML reads 202307080000 as int
    if isinstance(s, str) and not _ISO_TIME.fullmatch(s) or not isinstance(s, (str, datetime.date)):
        raise ValueError(bad)
    try:
        t = pd.to_datetime(s, format="%Y%m%d%H%M") if isinstance(s, str) and s.isdigit() else pd.Timestamp(s)
    except (ValueError, TypeError):
        raise ValueError(bad) from None
    if t.second or t.microsecond or t.nanosecond:  # images are named to the minute
        raise ValueError(f"{key}: {v!r} is not on a whole minute; images are named to the minute (YYYY-MM-DD hh:mm)")
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return f"{t:%Y-%m-%d %H:%M}"


@dataclass
class TimesConfig:
    select: Literal["test", "list", "range", "all"] = "test"
    list_utc: list[Any] = field(default_factory=list)
    start: Any = None
    end: Any = None
    step_min: int = 60
    limit: int = 1  # as config.yaml: a whole-grid map takes minutes

    def check(self):
        self.list_utc = [utc_text(v, f"times.list_utc[{i}]") for i, v in enumerate(self.list_utc)]
        self.start = None if self.start is None else utc_text(self.start, "times.start")
        self.end = None if self.end is None else utc_text(self.end, "times.end")
        if self.select == "range" and (not self.start or not self.end):
            raise ValueError("times.select is 'range': set times.start and times.end (UTC, e.g. '2023-07-01 00:00')")
        if self.step_min < 1:
            raise ValueError(f"times.step_min must be >= 1, got {self.step_min}")
        if self.limit < 0:
            raise ValueError(f"times.limit must be >= 0 (0 = no limit), got {self.limit}")


@dataclass
class Config:
    checkpoint: Path = Path("step03_train_clay/weights/best.pt")
    raw_dir: Path = Path("data/raw")
    stations_csv: Path | None = Path("data/raw/stations.csv")  # null: no station dots, no map_at_stations.csv
    index_dir: Path = Path("step01_make_index/outputs")
    output_dir: Path = Path(f"{STEP}/outputs")
    times: TimesConfig = field(default_factory=TimesConfig)
    region: Optional[list[int]] = None
    on_missing_image: Literal["skip", "fail"] = "skip"
    block_rows: int = 8
    batch_size: int = 8192
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    num_threads: int = 0
    skip_existing: bool = True
    quicklook: bool = True
    coverage_km: float = 100.0
    progress: bool = True
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def check(self):
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.region is not None and (len(self.region) != 4 or min(self.region[2:]) < 1 or min(self.region[:2]) < 0):
            raise ValueError(f"region must be [row0, col0, ny, nx] (pixels of static.nc's grid, ny, nx >= 1) or null, got {self.region}")
        if self.coverage_km < 0:
            raise ValueError(f"coverage_km must be >= 0 (0 = no line), got {self.coverage_km}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = all cores / processes), got {self.num_threads}")
        check_device_name(self.device, "device")


def _map_attrs(path: Path) -> dict | None:
    """The global attributes of a map file and its variables' names (``_variables``); None if it cannot be read."""
    if not path.is_file():
        return None
    try:
        with netCDF4.Dataset(path) as ds:
            return {**{k: ds.getncattr(k) for k in ds.ncattrs()}, "_variables": set(ds.variables)}
    except (OSError, RuntimeError):
        return None


def _same_model_field(a: dict, ckpt_fp: str, grid, precision: str, inputs_fp: str | None,
                      expect: dict | None = None) -> bool:
    """Whether a map file's attributes ``a`` say its model field (``t2m_model`` and its standard error) is the one
    this run would compute: the same checkpoint, image and static files, precision, grid and map layout, and the
    attributes in ``expect`` (the standard error's terms, the edge handling: what this code makes of them)."""
    if inputs_fp is not None and a.get("inputs_fingerprint") != inputs_fp:
        return False
    if expect and any(str(a.get(k)) != str(v) for k, v in expect.items()):
        return False
    if str(a.get("map_layout")) != str(MAP_LAYOUT):  # written by an older step04: other variables
        return False
    return (a.get("checkpoint_fingerprint") == ckpt_fp and a.get("precision") == precision
            and all(str(a.get(k)) == str(v) for k, v in grid.attrs().items()))


def station_sources(predictor, frame, static: Static, t: pd.Timestamp, obs_t: pd.DataFrame, site: np.ndarray,
                    cfg: FusionConfig) -> TimeSources:
    """One time's fusion stations (:func:`~shared.mapping.analysis.time_sources`) with the model run at each
    station's own height: the residual is what the station saw beyond the model there."""
    m, m_se = predict_pixels(predictor, frame, static, t, obs_t["pixel_y"].to_numpy(), obs_t["pixel_x"].to_numpy(),
                             site, height_m=obs_t["elev_m"].to_numpy())
    return time_sources(obs_t, m, static, cfg, m_se)


def map_is_complete(a: dict | None, ckpt_fp: str, grid, precision: str, inputs_fp: str | None = None,
                    quicklook: str | None = None, fusion: str | None = None, expect: dict | None = None) -> bool:
    """Whether the map whose attributes are ``a`` (:func:`_map_attrs`; None: no readable map) is finished with the
    same checkpoint, inputs, precision, grid, fusion and quicklook settings (maps are written atomically after their
    PNG, so present = whole)."""
    if a is None or "t2m" not in a["_variables"]:
        return False
    if quicklook is not None and a.get("quicklook_settings") != quicklook:
        return False
    if fusion is not None and a.get("fusion_settings") != fusion:
        return False
    return _same_model_field(a, ckpt_fp, grid, precision, inputs_fp, expect)


def stored_model_field(path: Path, a: dict | None, ckpt_fp: str, grid, precision: str, inputs_fp: str,
                       expect: dict | None = None) -> tuple[MapResult, int] | None:
    """The model field of an existing map made with the same checkpoint, inputs, precision and grid
    (:func:`_same_model_field`), as :func:`shared.mapping.predict.predict_map` would return it, and the count of
    image pixels outside the physical range it recorded; None when there is none to reuse. The file stores
    ``t2m_model`` and ``t2m_model_standard_error`` in float32, as computed, so a map fused again from them equals
    one made from scratch: when only the fusion or the quicklook settings changed, step04 redoes those alone.
    ``a``: the file's attributes (:func:`_map_attrs`), read once for this and :func:`map_is_complete`."""
    if a is None or not {"t2m_model", "t2m_model_standard_error"} <= a["_variables"]:
        return None
    if not _same_model_field(a, ckpt_fp, grid, precision, inputs_fp, expect):
        return None
    t0 = time.time()
    try:
        m = read_map(path, grid)
    except UserError:
        return None
    model, se = m.layers.get("t2m_model"), m.layers.get("t2m_model_standard_error")
    if model is None or se is None:
        return None
    res = MapResult(t2m_K=model, se_K=se, n_windows=int(a.get("n_pixels_predicted", 0)),
                    n_missing=int(a.get("n_pixels_missing_input", 0)), seconds=time.time() - t0,
                    peak_rss_bytes=peak_rss_bytes(), block_bytes=0)
    return res, int(a.get("n_input_pixels_out_of_physical_range", 0))


def station_pixels(stations_csv: Path, static: Static) -> pd.DataFrame:
    """Stations of ``stations_csv`` on this grid: ``stn_id, name, lat, lon, pixel_y, pixel_x``."""
    st = read_stations(stations_csv)
    py, px = static.grid.latlon_to_rowcol(st["lat"].to_numpy(), st["lon"].to_numpy())
    st = st.assign(pixel_y=py, pixel_x=px)
    return st[static.grid.inside(py, px)].reset_index(drop=True)


def learnt_station_distance(stations: pd.DataFrame | None, static: Static, index_dir: Path):
    """(ny, nx) km to the nearest station the model learnt from (train + val rows of step01's index; every
    station of the table when there is no index), and the words that say which; (None, "") without stations."""
    if stations is None or stations.empty:
        return None, ""
    ids = learnt_station_ids(index_dir)
    st = stations[stations["stn_id"].isin(ids)] if ids else stations
    note = "of the train and validation splits" if ids else "in the station table"
    if st.empty:
        return None, ""
    return station_distance_km(static.grid, st["pixel_y"].to_numpy(), st["pixel_x"].to_numpy()), note


#: map_at_stations.csv's columns taken from the maps (then the observation's, from step01's index)
SAMPLE_COLUMNS = ["time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "t2m_K", "t2m_c", "t2m_se_K", "t2m_model_c",
                  "in_fusion"]
_KELVIN_COLUMNS = ["t2m_K", "t2m_c", "t2m_se_K", "t2m_model_c"]


def _file_key(path: Path) -> str:
    """A file's size and time as a run record holds them (:func:`~shared.core.records.fingerprint`): a file
    written again has another."""
    return fingerprint([path])[str(path)]


def stations_key(stations: pd.DataFrame, offset: tuple[int, int]) -> str:
    """Digest of the stations a map is sampled at (ids, coordinates, pixels) and of the map's offset in static.nc."""
    import hashlib

    cols = stations[["stn_id", "lat", "lon", "pixel_y", "pixel_x"]].reset_index(drop=True)
    h = hashlib.blake2b(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes(), digest_size=8)
    h.update(np.asarray(offset, dtype=np.int64).tobytes())
    return h.hexdigest()


def times_after_index(times, index_dir: Path) -> list[pd.Timestamp]:
    """The ``times`` later than the last image time of step01's index (none without an index): hours whose
    observations step01 has not indexed yet."""
    ip = index_dir / "index.csv"
    if not ip.is_file():
        return []
    last = pd.to_datetime(pd.read_csv(ip, usecols=["sat_time_utc"])["sat_time_utc"]).max()
    return [] if pd.isna(last) else [pd.Timestamp(t) for t in times if pd.Timestamp(t) > last]


def _last_station_samples(out: Path) -> dict:
    """The last run's ``station_samples`` entry of maps.json; empty when there is none or it is unreadable."""
    try:
        with open(out / "maps.json", encoding="utf-8") as fh:
            got = json.load(fh).get("station_samples")
    except (OSError, ValueError, AttributeError):
        return {}
    return got if isinstance(got, dict) else {}


def sample_maps_at_stations(map_paths: list[Path], stations: pd.DataFrame, grid,
                            offset: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """One row per (map, station): the map values at the station pixel (analysis ``t2m``, its standard error,
    the model alone, in K and degC to 0.1 mK) and whether the station's observation made the analysis.

    ``pixel_y/x`` are static.nc's pixel indices; ``offset`` is where the maps' ``grid`` starts in it.
    """
    parts = []
    py, px = stations["pixel_y"].to_numpy(), stations["pixel_x"].to_numpy()
    ids = stations["stn_id"].to_numpy()
    at = (py - offset[0], px - offset[1])
    for p in map_paths:
        f = read_map(p, grid)
        v = f.t2m[at].astype(np.float64)
        se = f.layers["t2m_standard_error"][at] if "t2m_standard_error" in f.layers else np.full(len(v), np.nan)
        parts.append(pd.DataFrame({"time_utc": f.time, "stn_id": ids,
                                   "lat": stations["lat"].to_numpy(), "lon": stations["lon"].to_numpy(),
                                   "pixel_y": py, "pixel_x": px, "t2m_K": v, "t2m_c": v - KELVIN,
                                   "t2m_se_K": se.astype(np.float64),
                                   "t2m_model_c": f.t2m_model[at].astype(np.float64) - KELVIN,
                                   "in_fusion": np.isin(ids, f.fusion_ids) if f.fusion_ids is not None else False}))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SAMPLE_COLUMNS)
    df["time_utc"] = pd.to_datetime(df["time_utc"]).astype("datetime64[ns]")
    df[_KELVIN_COLUMNS] = df[_KELVIN_COLUMNS].astype(np.float64).round(4)  # 0.1 mK: the maps are float32
    return df[SAMPLE_COLUMNS]


def with_observations(df: pd.DataFrame, index_dir: Path | None) -> pd.DataFrame:
    """``df`` (:func:`sample_maps_at_stations`' rows) with step01's observation, split and ``error_K`` (map minus
    observation) where the index has them; sorted by time and station."""
    ip = index_dir / "index.csv" if index_dir is not None else None
    if ip is not None and ip.is_file() and len(df):
        obs = pd.read_csv(ip, usecols=["sat_time_utc", "stn_id", "ta_c", "split"])
        obs["sat_time_utc"] = pd.to_datetime(obs["sat_time_utc"]).astype("datetime64[ns]")
        obs = obs.rename(columns={"sat_time_utc": "time_utc", "ta_c": "obs_c"})
        df = df.merge(obs, on=["time_utc", "stn_id"], how="left")
        df["error_K"] = (df["t2m_c"] - df["obs_c"]).round(4)
    return df.sort_values(["time_utc", "stn_id"]).reset_index(drop=True)


def map_samples(present: list[Path], stations: pd.DataFrame, grid, offset: tuple[int, int], out: Path,
                previous: dict) -> tuple[pd.DataFrame, dict, int]:
    """map_at_stations.csv's map columns for the ``present`` maps, reading only the maps written since the last
    run's CSV: the rows of a map whose file is unchanged (size and time, as recorded in ``previous``, the last
    maps.json's ``station_samples``) are taken from that CSV when the stations are the same. Reading every map
    took about 0.06 s a map (2 min for a season's 2,000) at the end of a run that made one.

    Returns the rows, the ``station_samples`` entry to record (written after the CSV) and the maps read.
    """
    key = stations_key(stations, offset)
    fps = fingerprint(present)
    keys = {p.name: fps[str(p)] for p in present}
    if not len(stations):  # no station in the region: no row, no map to read
        return sample_maps_at_stations([], stations, grid, offset), {"stations": key, "maps": keys}, 0
    csv = out / "map_at_stations.csv"
    kept: list[Path] = []
    rows = None
    if previous.get("stations") == key and csv.is_file() and previous.get("csv") == _file_key(csv):
        was = previous.get("maps") if isinstance(previous.get("maps"), dict) else {}
        kept = [p for p in present if was.get(p.name) == keys[p.name]]
    if kept:
        try:
            rows = pd.read_csv(csv, usecols=SAMPLE_COLUMNS, dtype={"stn_id": np.int64})
            rows["time_utc"] = pd.to_datetime(rows["time_utc"]).astype("datetime64[ns]")
        except (OSError, ValueError) as e:  # an unreadable CSV: read the maps
            print(f"note: {csv} unreadable ({type(e).__name__}); reading every map for it", file=sys.stderr)
            kept, rows = [], None
    if rows is not None:
        times = {map_name(t): t for t in rows["time_utc"].unique()}
        n = rows.groupby("time_utc").size()
        kept = [p for p in kept if p.name in times and n.get(times[p.name], 0) == len(stations)]
        rows = rows[rows["time_utc"].isin([times[p.name] for p in kept])]
    kept_names = {p.name for p in kept}
    read = [p for p in present if p.name not in kept_names]
    new = sample_maps_at_stations(read, stations, grid, offset)
    if rows is None or not len(rows):
        df = new
    else:  # rows of the last CSV and of the maps read now (none: the CSV's alone, with its column types)
        df = pd.concat([rows, new], ignore_index=True) if len(new) else rows.reset_index(drop=True)
    df["in_fusion"] = df["in_fusion"].astype(bool)
    return df, {"stations": key, "maps": keys}, len(read)


def run(cfg: Config, ctx: Context) -> Result:
    """step04 for this rank's share of the times; rank 0 writes the summary files.

    Maps already complete for the same checkpoint, image files, static.nc,
    precision, fusion and quicklook settings are kept (``skip_existing``) unless ``--force``; of a map whose
    fusion or quicklook settings differ, the model field is reused (:func:`stored_model_field`).
    """
    rank, world, force = ctx.dist.rank, ctx.dist.world, ctx.force
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)

    require_file(cfg.checkpoint, "checkpoint", rerun("step03") + " or set checkpoint")
    predictor = load_predictor(cfg.checkpoint, cfg.precision, cfg.device)
    cpu = set_cpu_threads(cfg.num_threads, "num_threads", world, on_cpu=str(predictor.device).startswith("cpu"))
    threads = cpu.threads
    ckpt_fp = checkpoint_fingerprint(cfg.checkpoint)
    static = read_static(cfg.raw_dir / "static.nc")
    times, missing, selected = select_times(cfg.times, cfg.index_dir, cfg.raw_dir)
    if len(times) < selected and rank == 0:
        print(f"mapping {len(times)} of the {selected} times of times.select: {cfg.times.select}, evenly spaced "
              f"(times.limit: {cfg.times.limit}; 0 maps them all)")
    if missing:
        msg = f"{len(missing)} requested time(s) have no image: {'; '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        if cfg.on_missing_image == "fail":
            raise UserError(msg + " (set on_missing_image: skip to map the others)")
        if rank == 0:
            print(f"warning: {msg}; skipped (on_missing_image: skip)", file=sys.stderr)
    if times.empty:
        raise UserError("no time to map: " + ("; ".join(missing[:3]) if missing else "the selection is empty"))
    if cfg.stations_csv is not None and not cfg.stations_csv.is_file():
        raise UserError(f"station table not found: {cfg.stations_csv} (stations_csv); point it at the station "
                        "CSV, or set stations_csv: null to map without station dots and map_at_stations.csv")
    stations = station_pixels(cfg.stations_csv, static) if cfg.stations_csv is not None else None
    region = check_region(cfg.region, static.grid)
    if region is None:
        grid_out, offset, st_out = static.grid, (0, 0), stations
    else:
        grid_out, offset = static.grid.window(*region), region[:2]
        st_out = None
        if stations is not None:
            ins = grid_out.inside(stations["pixel_y"] - offset[0], stations["pixel_x"] - offset[1])
            st_out = stations[ins].reset_index(drop=True)
    cut = (slice(offset[0], offset[0] + grid_out.ny), slice(offset[1], offset[1] + grid_out.nx))
    distance, distance_note = learnt_station_distance(stations, static, cfg.index_dir)
    distance = None if distance is None else distance[cut]
    st_plot = None if st_out is None else st_out.assign(pixel_y=st_out["pixel_y"] - offset[0], pixel_x=st_out["pixel_x"] - offset[1])

    # --- fusion: the hour's observations at the fusion stations, and the variogram ---------------------------
    site = site_fields(static)  # the site descriptors of every pixel, once per run
    sources, by_time, vg, vg_note, fusion_note = {}, {}, None, "", "fusion disabled (fusion.enabled: false)"
    if cfg.fusion.enabled:
        obs = fusion_observations(cfg.index_dir, times["time_utc"], cfg.fusion)
        by_time = dict(tuple(obs.groupby("time_utc"))) if obs is not None and len(obs) else {}
        if by_time:
            vg, vg_note = stored_variogram(predictor.fusion_residuals, static, cfg.fusion)
        if by_time and vg is None:
            # a checkpoint without a residual table: the variogram is fitted to the model's errors at the stations
            # of every mapped time (every rank), so the model is run there first; else each map's time does so
            bar = tqdm(list(times.itertuples()), desc="model at the fusion stations", unit="time",
                       disable=not (cfg.progress and rank == 0 and len(times) > 1))
            for r in bar:
                t = pd.Timestamp(r.time_utc)
                if (obs_t := by_time.get(t)) is not None:
                    frame = read_frame(resolve_path(r.path_bt), resolve_path(r.path_rf), resolve_path(r.path_sza),
                                       static.grid)
                    sources[t] = station_sources(predictor, frame, static, t, obs_t, site, cfg.fusion)
                    del frame
            vg, run_note = run_variogram(list(sources.values()), cfg.fusion)
            vg_note = f"{vg_note}: {run_note}"
        if vg is not None:
            if rank == 0 and (w := variogram_warning(vg, cfg.fusion)):
                print(f"warning: {w}", file=sys.stderr)
            fusion_note = (f"fusion: {sum(len(o) for o in by_time.values()):,} observations of the "
                           f"{split_names(cfg.fusion, obs['split'])} stations at {len(by_time)} of {len(times)} time(s); variogram "
                           f"{vg.model}, range {vg.range_km:.0f} km, nugget {vg.nugget:.2f} of the sill "
                           f"(elevation weight {cfg.fusion.elevation_weight:g} km/km), {vg_note}")
        elif obs is None:
            fusion_note = (f"fusion: no {cfg.index_dir / 'index.csv'} (step01's observations): the maps are the model "
                           "alone")
        else:
            fusion_note = (f"fusion: step01's index holds no observation of the {'+'.join(cfg.fusion.splits)} stations "
                           f"at the mapped times (with split.mode: time, a test day's observations are all test "
                           f"rows): the maps are the model alone")
    few = [t for t, o in by_time.items() if len(o) < cfg.fusion.min_stations]
    if rank == 0:
        print(f"step04: {fusion_note}")
        if cfg.fusion.enabled and (late := times_after_index(times["time_utc"], cfg.index_dir)):
            print(f"warning: {len(late)} mapped time(s) come after the last time of step01's index (first "
                  f"{late[0]:%Y-%m-%d %H:%M}): no observation of theirs is fused, their maps are the model alone; "
                  f"{rerun('step01')} first to index them", file=sys.stderr)
        if by_time and len(few) == len(by_time):
            print(f"warning: no mapped time has fusion.min_stations ({cfg.fusion.min_stations}) observations: every "
                  "map's t2m is the model alone", file=sys.stderr)
        elif few:
            print(f"warning: {len(few)} of {len(by_time)} mapped time(s) have fewer than fusion.min_stations "
                  f"({cfg.fusion.min_stations}) observations: their t2m is the model alone (first {few[0]})",
                  file=sys.stderr)

    mine = times.iloc[rank::world]
    if rank == 0:
        print(f"step04: {len(times)} map(s) of {grid_out.ny}x{grid_out.nx}{'' if region is None else f' (region of {static.grid.ny}x{static.grid.nx})'} on {world} process(es) x {threads} thread(s); "
              f"model {predictor.model_cfg.get('size')} (epoch {predictor.info.get('epoch')}), {cfg.precision} on {predictor.device}, "
              f"P={predictor.patch_size}, reflect-padded edges; standard error: {predictor.sd_source}")
    done, skipped, reused, records = 0, 0, 0, []
    thin = []  # times with enough observations whose stations with a model value were too few: the model alone
    quick = f"quicklook={cfg.quicklook} coverage_km={cfg.coverage_km:g}"
    attrs_common = {
        "checkpoint": repo_relative(cfg.checkpoint), "checkpoint_fingerprint": ckpt_fp,  # relative under the checkout
        "model_size": str(predictor.model_cfg.get("size")), "patch_size": predictor.patch_size,
        "precision": cfg.precision, "edge_handling": f"reflect padding of {predictor.patch_size // 2} pixels (numpy mode='reflect')",
        "missing_input": "pixels whose window holds a missing input value are NaN",
        "quicklook_settings": quick,
        "map_layout": MAP_LAYOUT,
        "model_standard_error": predictor.sd_source,
        "model_field_version": MODEL_FIELD_VERSION,
        "device": str(predictor.device).split(":")[0],  # cpu | cuda: the last bits of the model field differ
        # central P % interval = t2m +- k_P x t2m_standard_error (shared.models.intervals)
        "interval_multipliers": json.dumps(predictor.interval_multipliers, sort_keys=True),
        "interval_multipliers_source": predictor.intervals_source,
    }
    # a map file's model field is this run's only if made by this version of the code, on this kind of device, with
    # the standard error and the edges described the same way
    same_model = {k: attrs_common[k] for k in ("model_field_version", "device", "model_standard_error", "edge_handling",
                                                "patch_size")}
    for _, r in mine.iterrows():
        t = pd.Timestamp(r["time_utc"])
        path = out / map_name(t)
        png = path.with_suffix(".png")
        srcs = [resolve_path(r["path_bt"]), resolve_path(r["path_rf"]), resolve_path(r["path_sza"])]
        obs_t = by_time.get(t) if vg is not None else None
        fusion_key = (f"{cfg.fusion.describe()} variogram={json.dumps(vg.info(), sort_keys=True)} obs={obs_digest(obs_t)}"
                      if obs_t is not None else
                      ("disabled" if not cfg.fusion.enabled else f"{cfg.fusion.describe()} no observation"))
        old = _map_attrs(path) if cfg.skip_existing and not force else None  # --force: neither kept nor reused
        in_stat = inputs_stat_fingerprint(srcs + [static.path])  # the files' bytes are read only when this differs
        in_fp = (old["inputs_fingerprint"] if old and old.get("inputs_stat_fingerprint") == in_stat
                 and old.get("inputs_fingerprint") else inputs_fingerprint(srcs + [static.path]))
        if (map_is_complete(old, ckpt_fp, grid_out, cfg.precision, in_fp, quick, fusion_key, same_model)
                and (png.is_file() or not cfg.quicklook)):
            skipped += 1
            continue
        stored = stored_model_field(path, old, ckpt_fp, grid_out, cfg.precision, in_fp, same_model)
        frame = None
        if stored is not None:  # only the fusion or the quicklook changed: the model field is the file's
            res, n_implausible = stored
            reused += 1
        else:
            frame = read_frame(*srcs, static.grid)
            n_implausible = frame.out_of_range
            res = predict_map(predictor, frame, static, t, cfg.block_rows, cfg.batch_size, progress=cfg.progress,
                              desc=f"[rank {rank}] {t:%Y-%m-%d %H:%M}" if world > 1 else "", region=region, site=site)
        src = sources.get(t)
        if obs_t is not None and src is None:  # the model at this time's fusion stations, from the image read once
            src = station_sources(predictor, frame if frame is not None else read_frame(*srcs, static.grid), static, t,
                                  obs_t, site, cfg.fusion)
        del frame
        if n_implausible:
            print(f"warning: {t:%Y-%m-%d %H:%M}: {n_implausible:,} image pixel(s) outside the physical range were "
                  "treated as missing", flush=True, file=sys.stderr)
        t_fuse = time.perf_counter()
        fused = fuse_map(res.t2m_K, res.se_K, static, offset, src, vg, cfg.fusion) if vg is not None and src is not None else None
        rejected = [] if fused is None else [int(i) for i in src.stn_id[fused.rejected]]
        if rejected:
            print(f"warning: {t:%Y-%m-%d %H:%M}: the observation(s) of station(s) {', '.join(map(str, rejected))} differ "
                  f"from what their neighbours give by more than fusion.qc_max_z ({cfg.fusion.qc_max_z:g}) robust "
                  f"standard deviations and {cfg.fusion.qc_min_error_K:g} K: left out of this hour's analysis", flush=True, file=sys.stderr)
        if fused is not None and fused.fused:
            used = src.used()
            used[fused.rejected] = False
            t2m, se, ids = fused.value, fused.se, src.stn_id[used]
            dist = station_distance_km(static.grid, src.pixel_y[used], src.pixel_x[used])[cut]
            dist_note = f"of this time's fusion ({src.splits(cfg.fusion, used)} stations with an observation)"
            how = (f"model + {cfg.fusion.kriging}-kriged residuals of {fused.n_stations} {src.splits(cfg.fusion, used)} "
                   f"station(s) observed at this time" + cfg.fusion.blend_text())
            st_png = st_plot[st_plot["stn_id"].isin(set(ids))] if st_plot is not None else None
        else:
            t2m, se, ids, dist, dist_note, st_png = res.t2m_K, res.se_K, None, distance, distance_note, st_plot
            n_obs = 0 if src is None else int(src.used().sum())
            if src is not None and t not in few:
                thin.append(t)
            how = ("model only: fusion disabled" if not cfg.fusion.enabled else
                   "model only: step01's index holds no observation of a fusion station at this time" if n_obs == 0
                   else f"model only: {n_obs} fusion station(s) observed at this time, fewer than fusion.min_stations "
                   f"({cfg.fusion.min_stations})")
        fuse_s = time.perf_counter() - t_fuse
        attrs = dict(attrs_common, inputs_fingerprint=in_fp, inputs_stat_fingerprint=in_stat, input_files=" ".join(p.name for p in srcs),
                     n_pixels_missing_input=res.n_missing, n_pixels_predicted=res.n_windows,
                     n_input_pixels_out_of_physical_range=n_implausible, fusion_settings=fusion_key, analysis=how,
                     fusion_n_stations=0 if ids is None else len(ids),
                     fusion_hour_excess=0.0 if ids is None else round(float(fused.excess), 4),
                     fusion_variogram="" if vg is None else json.dumps(vg.info(), sort_keys=True),
                     fusion_variogram_source="" if vg is None else vg_note,
                     fusion_rejected_stations=" ".join(map(str, rejected)))
        layers = MapLayers(se_K=se, model_K=res.t2m_K, model_se_K=res.se_K, distance_km=dist, distance_note=dist_note,
                           fusion_ids=ids, analysis_note=how)
        ds = map_dataset(t2m, grid_out, t, static.lat[cut], static.lon[cut], attrs, layers)
        if cfg.quicklook:  # PNG first: a map file present means its quicklook is too
            note = f"{predictor.model_cfg.get('size')} model, {res.n_missing:,} px without input" if res.n_missing else ""
            quicklook(png, t2m, grid_out, t, static.lsmask[cut], static.lat[cut], static.lon[cut], st_png, note,
                      cfg.coverage_km, se_K=se, distance_km=dist, what=how,
                      increment_K=None if ids is None else t2m - res.t2m_K)
        else:  # an earlier run's quicklook would show another map under this one's name
            png.unlink(missing_ok=True)
        write_map(path, ds)
        cpu.check(f"while making {path.name}")
        release_free_heap()  # freed image buffers back to the system (measurements: release_free_heap)
        done += 1
        rec = {"time_utc": f"{t:%Y-%m-%d %H:%M}", "file": path.name, "seconds": round(res.seconds, 2),
               "fusion_seconds": round(fuse_s, 2), "fusion_stations": 0 if ids is None else len(ids),
               "windows_per_s": None if stored is not None else round(res.windows_per_s), "n_missing": res.n_missing,
               "peak_rss_MB": round(res.peak_rss_bytes / 2**20), "block_MB": round(res.block_bytes / 2**20, 1),
               "model_field_reused": stored is not None}
        records.append(rec)
        if stored is not None:
            print(f"{f'[rank {rank}] ' if world > 1 else ''}{path.name}: the model field of the existing file (same "
                  f"checkpoint, images and precision; read in {res.seconds:.1f} s) + {fuse_s:.1f} s fusion "
                  f"({rec['fusion_stations']} station(s))", flush=True)
            continue
        print(f"{f'[rank {rank}] ' if world > 1 else ''}{path.name}: {res.seconds:.1f} s model + {fuse_s:.1f} s fusion "
              f"({rec['fusion_stations']} station(s)), {res.windows_per_s:,.0f} windows/s, "
              f"{res.n_missing:,} px missing input, peak RSS {res.peak_rss_bytes / 2**20:,.0f} MB "
              f"(window block {res.block_bytes / 2**20:.0f} MB)", flush=True)

    if thin:  # the warning above counted observations; at these times the model had no value at some stations
        print(f"warning: {f'[rank {rank}] ' if world > 1 else ''}{len(thin)} map(s) are the model alone: fewer than "
              f"fusion.min_stations ({cfg.fusion.min_stations}) of the time's observing fusion stations could be used (the "
              f"model has no value at a station whose window holds a missing input pixel, and the check leaves out a "
              f"gross error; first {thin[0]:%Y-%m-%d %H:%M})", file=sys.stderr)
    ctx.dist.barrier()  # rank 0 summarises only after every rank has written its maps
    summary = {"maps_total": len(times), "maps_written": done, "maps_skipped_complete": skipped,
               "maps_model_field_reused": reused,
               "times_without_image": len(missing), "rank": rank, "world": world}
    if rank != 0:
        return Result(counts=summary)
    all_maps = [out / map_name(t) for t in times["time_utc"]]
    present = [p for p in all_maps if p.is_file()]
    if len(present) != len(all_maps):
        raise UserError(f"{len(all_maps) - len(present)} map(s) are missing after the run (did a rank fail?); rerun step04")
    outputs = list(present)
    if cfg.quicklook:
        outputs += [p.with_suffix(".png") for p in present]
    samples = {}
    if st_out is not None:
        st_csv = out / "map_at_stations.csv"
        at_st, samples, n_read = map_samples(present, st_out, grid_out, offset, out, _last_station_samples(out))
        write_csv(st_csv, with_observations(at_st, cfg.index_dir), date_format="%Y-%m-%d %H:%M:%S")
        samples["csv"] = _file_key(st_csv)
        summary["maps_read_for_station_csv"] = n_read
        outputs.append(st_csv)
    write_json(out / "maps.json", {"times_utc": [f"{t:%Y-%m-%d %H:%M}" for t in times["time_utc"]],
                                   "files": [p.name for p in present], "times_without_image": missing,
                                   "this_run_rank0": records, **summary,
                                   **({"station_samples": samples} if samples else {})})
    outputs.append(out / "maps.json")
    mapped = set(present)
    stale = [p for p in out.glob("ta_map_*.png") if p.with_suffix(".nc") not in mapped and not p.with_suffix(".nc").is_file()]
    for p in stale:  # a quicklook whose map is gone would mislead
        p.unlink()
    again = f" ({reused} fused again from their files' model field)" if reused else ""
    print(f"step04: wrote {done} map(s){again}, kept {skipped} complete one(s) (rank 0's share), {len(present)} in {out}")
    return Result(counts=summary, extra={"maps_rank0": records}, outputs=outputs)


def _times(cfg: Config) -> pd.DataFrame:
    try:
        return select_times(cfg.times, cfg.index_dir, cfg.raw_dir)[0]
    except UserError:
        return pd.DataFrame(columns=["time_utc", "path_bt", "path_rf", "path_sza"])  # run() reports it


def _index_files(cfg: Config) -> list[Path]:
    """step01 files step04 reads: test times, observations (map_at_stations.csv), the stations learnt from."""
    return [cfg.index_dir / f"index{s}.csv" for s in ("", "_test", "_train", "_val")]


def deps(cfg: Config) -> list[Path]:
    """The checkpoint, static.nc, the station table, the index (times, observations, stations learnt from)
    and the images of the selected times."""
    t = _times(cfg)
    images = sorted({resolve_path(p) for c in ("path_bt", "path_rf", "path_sza") for p in t[c]})
    return ([cfg.checkpoint, cfg.raw_dir / "static.nc"] + ([cfg.stations_csv] if cfg.stations_csv is not None else [])
            + _index_files(cfg) + images)


def outs(cfg: Config) -> list[Path]:
    out = cfg.output_dir
    maps = [out / map_name(t) for t in _times(cfg)["time_utc"]]
    return maps + ([m.with_suffix(".png") for m in maps] if cfg.quicklook else []) + [out / "maps.json"]


def upstream(cfg: Config) -> list:
    """The weights must be those of a finished step03 run (its record sits beside them in weights/); the index
    files read (test times, observations for map_at_stations.csv) those of a finished step01 run."""
    index = [f for f in _index_files(cfg)
             if f.exists() or (cfg.times.select == "test" and f.name == "index_test.csv")]
    return [step03_upstream(cfg.checkpoint)] + ([(cfg.index_dir, index, "step01")] if index else [])


STAGE = Stage(name=STEP, title="one 2 m air temperature map (CF netCDF + PNG) per time from the trained model",
              config=Config, deps=deps, outs=outs, upstream=upstream, run=run,
              record_dir=lambda cfg: cfg.output_dir, distributed=True, set_example="times.select=all", doc=__doc__,
              version=f"{MAP_LAYOUT}.{FINGERPRINTS}",
              volatile=("progress", "num_threads", "batch_size", "block_rows"))  # as maps kept: not their key
