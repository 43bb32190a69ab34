"""Maps against the demo world's true field at many times: seasons x day/night, by distance to a station.

    PYTHONPATH=. .venv/bin/python benchmarks/map_truth.py [--per-season 3] [--out benchmarks/out/map_truth]
        [--checkpoint path/to/best.pt] [--set fusion.idw_weight=0 ...]

Picks test times spread over the four seasons (DJF, MAM, JJA, SON) and the
day (by default 03, 09 and 18 UTC = 12, 18 and 03 KST; the nearest test time
of the season when one is missing), runs the real step04 on them (full grid,
analysis + model field, into ``--out/maps``) and the real step05 with those
maps (``--out/eval``), then prints, from step05's ``metrics.json``, each map's
RMSE against the true field (all pixels, land, sea; t2m and t2m_model) and the
mean by distance band to the nearest fusion station of the hour, next to the
noise floor, and how often the true value lies in each map's own 50 and 90 %
intervals. A full 900 x 900 map takes ~1.5 min on 2 cores: 12 maps ~20 min.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}


def pick_times(index_test: Path, per_season: int, hours_utc: list[int]) -> list[pd.Timestamp]:
    t = pd.DatetimeIndex(sorted(pd.to_datetime(pd.read_csv(index_test, usecols=["sat_time_utc"])["sat_time_utc"]).unique()))
    out = []
    for months in SEASONS.values():
        ts = t[t.month.isin(months)]
        if len(ts) == 0:
            continue
        for h in hours_utc[:per_season]:
            cand = ts[ts.hour == h]
            if len(cand) == 0:  # the nearest hour of the day
                cand = ts[abs(((ts.hour - h + 12) % 24) - 12) == min(abs(((ts.hour - h + 12) % 24) - 12))]
            pick = cand[len(cand) // 2]
            if pick not in out:
                out.append(pick)
    return out


def run(step: str, *sets: str) -> None:
    argv = [sys.executable, str(ROOT / step / "run.py")]
    for s in sets:
        argv += ["--set", s]
    t0 = time.time()
    r = subprocess.run(argv, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"{step} failed (exit {r.returncode})")
    print(f"{step}: {time.time() - t0:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/map_truth")
    ap.add_argument("--per-season", type=int, default=3)
    ap.add_argument("--hours-utc", type=int, nargs="+", default=[3, 9, 18])
    ap.add_argument("--skip-step04", action="store_true", help="reuse the maps already in --out/maps")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a step03 best.pt (default: step04's and step05's own)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config key set in both step04 and step05, e.g. fusion.idw_weight=0 (repeatable)")
    a = ap.parse_args(argv)
    ck = ([] if a.checkpoint is None else [f"checkpoint={a.checkpoint.resolve()}"]) + a.sets
    times = pick_times(a.index_dir / "index_test.csv", a.per_season, a.hours_utc)
    print(f"{len(times)} test times: " + ", ".join(f"{t:%Y-%m-%d %H}" for t in times), flush=True)
    maps, ev = a.out / "maps", a.out / "eval"
    if not a.skip_step04:
        lst = json.dumps([f"{t:%Y-%m-%d %H:%M}" for t in times])
        run("step04_infer_map", "times.select=list", f"times.list_utc={lst}", "times.limit=0", f"output_dir={maps}",
            "progress=false", *ck)
    run("step05_eval_metrics", f"map_dir={maps}", f"output_dir={ev}", *ck)
    # a score over no pixels is null in the file: NaN here, so it prints as "nan"
    m = json.loads((ev / "metrics.json").read_text(),
                   object_hook=lambda o: {k: float("nan") if v is None else v for k, v in o.items()})
    d = m.get("demo_world") or {}
    truth = d.get("maps_vs_truth") or []
    if not truth:
        print(f"no map was scored against the truth: step05 read no finished map of step04's in {maps} (an "
              "interrupted step04: rerun without --skip-step04; step05's warnings above say which it left out), or "
              "the raw data are not the demo world's (no true fields)")
        return 1
    print()
    print(f"{'time UTC':<17} {'KST':>5} {'season':>6} {'stations':>8} {'t2m all':>8} {'land':>6} {'sea':>6} "
          f"{'model all':>9} {'land':>6} {'sea':>6}")
    for r in truth:
        t = pd.Timestamp(r["time_utc"])
        season = next(s for s, ms in SEASONS.items() if t.month in ms)
        print(f"{r['time_utc']:<17} {(t.hour + 9) % 24:>5} {season:>6} {r.get('fusion_stations', 0):>8} "
              f"{r['rmse_K_all']:>8.3f} {r['rmse_K_land']:>6.3f} {r['rmse_K_sea']:>6.3f} "
              f"{r['model_rmse_K_all']:>9.3f} {r['model_rmse_K_land']:>6.3f} {r['model_rmse_K_sea']:>6.3f}")
    print()
    print(f"mean over {len(truth)} maps, by distance to the nearest fusion station (K; t2m = analysis):")
    print(f"{'band':<14} {'t2m':>7} {'land':>7} {'sea':>7} {'model':>7} {'land':>7} {'sea':>7}   "
          f"t2m's 50 / 90 % intervals cover (land; sea)")
    for name, v in (d.get("maps_vs_truth_by_distance_band") or {}).items():
        cov = (f"   {100 * v['coverage_50_land']:.1f} / {100 * v['coverage_90_land']:.1f} %; "
               f"{100 * v['coverage_50_sea']:.1f} / {100 * v['coverage_90_sea']:.1f} %" if "coverage_90_land" in v else "")
        print(f"{name:<14} {v['all']:>7.3f} {v['land']:>7.3f} {v['sea']:>7.3f} {v['model_all']:>7.3f} "
              f"{v['model_land']:>7.3f} {v['model_sea']:>7.3f}{cov}")
    tr = d.get("test_rows") or {}
    print(f"noise floor on the test rows: {tr.get('test_rows_obs_vs_truth_rmse_K', float('nan')):.3f} K "
          f"(elevation-corrected {tr.get('test_rows_obs_vs_truth_elev_corrected_rmse_K', float('nan')):.3f} K); "
          f"1.5 x = {1.5 * tr.get('test_rows_obs_vs_truth_rmse_K', float('nan')):.3f} K")
    ms = m.get("map_at_stations") or {}
    if ms:
        print(f"maps at the test stations ({ms['n']} rows): t2m {ms['rmse_K']:.3f} K, t2m_model "
              f"{ms['map_model_field']['rmse_K']:.3f} K; 90 % interval coverage "
              f"{ms['intervals'].get('coverage_90', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
