"""step03 training on small fabricated patch chunks: learning, resume, feature cache, DDP, bad input."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import STAGES, adopt

from shared.core.cli import run_main
from shared.core.distributed import Dist
from shared.core.errors import UserError
from shared.core.records import read_record
from shared.core.runner import execute
from shared.io.channels import IR105_CH
from shared.io.patches import batch_view, load_chunk, read_manifest, write_synthetic_patches
from shared.models.checkpoint import load_ta_checkpoint
from shared.models.clay import ClayEncoder
from shared.models.se_growth import COLD_REF_K
from shared.training.batches import ChunkBatches

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "step03_train_clay" / "run.py"
# Small and quick: 1 token per patch, small head, batches that span chunk borders.
FAST = ["model.resize_to=8", "model.head_hidden=64", "train.batch_size=64", "train.lr=3e-3", "train.warmup=0.2",
        "train.num_threads=1"]


def step_main(argv):
    """What step03's run.py does: the runner with the train and pretrain stages."""
    return execute(STAGES["step03_train_clay"], argv)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    d = tmp_path_factory.mktemp("p") / "outputs"
    return write_synthetic_patches(d, {"train": 768, "val": 256, "test": 64}, chunk_rows=300, noise=0.1)


def run_step(tmp, patch_dir, *sets, extra=(), out="run"):
    """Run step03's main in-process; returns (exit code, stdout+stderr)."""
    argv = ["--set", f"data.patch_dir={patch_dir}", "--set", f"output.weights_dir={tmp / out / 'weights'}",
            "--set", f"output.outputs_dir={tmp / out / 'outputs'}"]
    for s in FAST + list(sets):
        argv += ["--set", s]
    argv += list(extra)
    try:
        run_main(step_main, argv)
    except SystemExit as e:
        return e.code
    return 0


def log_of(tmp, out="run"):
    return pd.read_csv(tmp / out / "outputs" / "train_log.csv")


def test_batches_cover_split_once_in_any_sharding(patches):
    _, splits = read_manifest(patches)
    tr = splits["train"]
    one = ChunkBatches(tr, 19, 9, batch_size=64, seed=3, shuffle_files=True, shuffle_within=True)
    one.set_epoch(2)
    seen = torch.cat([b["y"] for b in one])
    assert len(seen) == 768 and len(torch.unique(seen)) == 768  # every row exactly once, across chunk borders
    ranks = []
    for r in range(2):
        p = ChunkBatches(tr, 19, 9, batch_size=64, seed=3, shuffle_files=True, shuffle_within=True, rank=r, world=2,
                         drop_last=True)
        p.set_epoch(2)
        ranks.append(torch.cat([b["y"] for b in p]))
    assert len(ranks[0]) == len(ranks[1]) == 384
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())
    one.set_epoch(3)
    assert not torch.equal(torch.cat([b["y"] for b in one]), seen)  # new order each epoch
    # Chunks hold consecutive times: mix_chunks shuffles rows of several chunks together.
    offsets = tr.offsets
    for mix, n_files in ((1, 1), (3, 3)):
        p = ChunkBatches(tr, 19, 9, batch_size=64, seed=3, shuffle_files=True, shuffle_within=True, mix_chunks=mix)
        first = p.batch_indices()[0]
        assert len(torch.unique(torch.searchsorted(offsets, first, right=True))) == n_files


def test_training_learns_and_writes_outputs(tmp_path, patches, capsys):
    assert run_step(tmp_path, patches, "train.epochs=4") == 0
    log = log_of(tmp_path)
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "rmse_norm", "rmse_K", "lr", "seconds",
                                 "data_wait_s"]
    assert len(log) == 4
    assert log.val_loss.iloc[-1] < 0.6 * log.val_loss.iloc[0]
    assert log.val_loss.iloc[-1] < 0.4  # target variance is ~0.7
    assert (log.rmse_K - log.rmse_norm * 9.0).abs().max() < 1e-9  # target std of the fabricated stats
    model, ck = load_ta_checkpoint(tmp_path / "run" / "weights" / "best.pt")
    assert ck["epoch"] == ck["best_epoch"] == int(log.val_loss.idxmin()) + 1
    assert ck["norm"]["target_std"] == 9.0 and ck["norm"]["patch_size"] == 9 and len(ck["norm"]["channels"]) == 19
    assert {"optimizer", "scheduler", "best_val", "model_cfg"} <= set(ck)
    assert (tmp_path / "run" / "outputs" / "run.json").is_file()
    # the standard error: the variance head's sd, scaled so the val rows' standardised errors have unit RMS
    from shared.io.patches import batch_view, load_chunk, read_manifest
    from shared.mapping.predict import load_predictor

    assert ck["model_cfg"]["uncertainty"] == "gaussian" and ck["uncertainty"]["val_rows"] > 0
    pred = load_predictor(tmp_path / "run" / "weights" / "best.pt")
    assert pred.sd_source.startswith("variance head") and pred.sigma_scale == ck["uncertainty"]["sigma_scale"]
    zs, sds, ys = [], [], []
    for f in read_manifest(patches, splits=("val",))[1]["val"].files:
        b = batch_view(load_chunk(f))
        z, sd = pred.predict_dist({k: v for k, v in b.items() if k != "y"})
        zs.append(z), sds.append(sd), ys.append(b["y"].numpy())
    z, sd, y = (np.concatenate(a) for a in (zs, sds, ys))
    assert len(y) == ck["uncertainty"]["val_rows"]
    assert np.sqrt(np.mean(((y - z) / sd) ** 2)) == pytest.approx(1.0, rel=1e-3)
    assert sd.std() > 0  # one standard error per row, not one for all
    # model.distance_variance (default): the training stations are stored, the variance's growth away from them
    dist = ck["uncertainty"]["distance"]
    train_ll = np.concatenate([load_chunk(f)["loc"][:, :2].numpy() for f in read_manifest(patches)[1]["train"].files])
    np.testing.assert_array_equal(dist["train_sites"].numpy(), np.unique(train_ll.astype(np.float64), axis=0))
    assert dist["slope_per_100km"] >= 0 and dist["cap_km"] > 0
    # model.cloud_variance (default): the cold-top term, capped at the coldest validation row's IR 10.5 um
    val_t = np.concatenate([load_chunk(f)["x"][:, IR105_CH, 4, 4].numpy() for f in read_manifest(patches)[1]["val"].files])
    val_t = val_t.astype(np.float64) * pred.input_std[IR105_CH] + pred.input_mean[IR105_CH]
    cold = ck["uncertainty"]["cold"]
    assert cold["ref_K"] == COLD_REF_K and cold["slope_per_10K"] >= 0
    assert cold["cap_K"] == pytest.approx(max(COLD_REF_K - val_t.min(), 0.0), rel=1e-5)
    # the residual table for the fusion's variogram: every train and val row, val rows in file order = y - pred
    res = pred.fusion_residuals
    splits = read_manifest(patches)[1]
    assert len(res["resid"]) == splits["train"].n_rows + splits["val"].n_rows
    assert (res["split"] == 0).sum() == splits["train"].n_rows and (res["split"] == 1).sum() == len(y)
    np.testing.assert_allclose(res["resid"][res["split"] == 1], y - z, rtol=1e-4, atol=1e-5)
    meta = [load_chunk(f)["meta"] for f in splits["val"].files]
    assert np.array_equal(res["time_s"][res["split"] == 1], np.concatenate([m["time"].numpy() for m in meta]))
    assert np.array_equal(res["pixel_x"][res["split"] == 1], np.concatenate([m["pixel_x"].numpy() for m in meta]))
    # the mean head's clamp range: each head input's minimum and maximum over exactly the training rows
    m = pred.model
    assert ck["model_cfg"]["clamp_inputs"] is True and m.clamp_inputs
    with torch.no_grad():
        h = torch.cat([m.head_input(m.encode(b), m.aux_features(b))
                       for b in (batch_view(load_chunk(f)) for f in splits["train"].files)])
    assert h.shape == (768, m.input_lo.numel())
    torch.testing.assert_close(m.input_lo, h.min(0).values)
    torch.testing.assert_close(m.input_hi, h.max(0).values)
    assert (m.input_lo < m.input_hi).any()
    # the calibration above saw the extrapolation term: validation rows beyond the training range get a larger
    # variance than the variance head on the clamped inputs gives alone
    assert ck["model_cfg"]["extrapolation_variance"] is True and m.extrapolation_variance
    b = batch_view(load_chunk(read_manifest(patches, splits=("val",))[1]["val"].files[0]))
    b = {k: v for k, v in b.items() if k != "y"}
    m.extrapolation_variance = False  # the variance head on the raw inputs
    sd_raw = pred.predict_dist(b)[1]
    m.extrapolation_variance = True
    n = len(sd_raw)
    assert not np.allclose(sd_raw, sd[:n])
    with torch.no_grad():
        hv = m.head_input(m.encode(b), m.aux_features(b))
    outside = ((hv < m.input_lo) | (hv > m.input_hi)).any(1).numpy()
    assert outside.any() and np.allclose(sd_raw[~outside], sd[:n][~outside])  # inside the range: no term
    capsys.readouterr()

    # Unchanged config and inputs: "up to date" without importing torch.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(RUN), "--set", f"data.patch_dir={patches}",
            "--set", f"output.weights_dir={tmp_path / 'run' / 'weights'}",
            "--set", f"output.outputs_dir={tmp_path / 'run' / 'outputs'}", "--set", "train.epochs=4"]
    for s in FAST:
        argv += ["--set", s]
    # (Wall time is not asserted on a shared machine; not importing torch is what keeps it < 1 s.)
    r = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "up to date" in r.stdout
    assert not [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith("| torch")]


def test_learning_curve_draws_the_log(tmp_path, patches):
    """A finished step03 run writes learning_curve.png from its train_log.csv: the validation line is rmse_K, the
    training line sqrt(train_loss) x target std, the marker at the best validation epoch (the kept checkpoint);
    an ensemble's log gets one pair of lines per member, a refit's log its own line."""
    import matplotlib.pyplot as plt

    from shared.evaluation.plots import learning_curve_figure

    assert run_step(tmp_path, patches, "train.epochs=3") == 0
    png = tmp_path / "run" / "outputs" / "learning_curve.png"
    assert png.stat().st_size > 10_000
    assert str(png) in json.loads((tmp_path / "run" / "outputs" / "run.json").read_text())["outputs"]
    log = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.04, 0.01, 0.0081, 0.0064],
                        "rmse_K": [3.0, 1.5, 1.2, 1.3], "lr": [1e-3, 8e-4, 4e-4, 1e-4]})
    fig = learning_curve_figure(log, 10.0)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert list(lines["validation stations"].get_ydata()) == [3.0, 1.5, 1.2, 1.3]
    assert np.allclose(lines["training rows, mean over the epoch"].get_ydata(), [2.0, 1.0, 0.9, 0.8])
    best = lines["best: epoch 3, 1.200 K"]
    assert list(best.get_xdata()) == [3] and list(best.get_ydata()) == [1.2]
    plt.close(fig)
    two = pd.concat([log.assign(member=0), log.assign(member=1, rmse_K=log["rmse_K"] - 0.1)])
    refit = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.04, 0.01, 0.0049]})
    fig = learning_curve_figure(two, 10.0, refit)
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert "validation stations, member 1" in labels and "best: epoch 3, 1.100 K" in labels
    assert "refit, training + validation rows" in labels
    plt.close(fig)
    # an ensemble's refits: one dotted line per member, in its colour
    fig = learning_curve_figure(two, 10.0, pd.concat([refit.assign(member=0), refit.assign(member=1)]))
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert lines["refit, training + validation rows, member 1"].get_color() == lines[
        "validation stations, member 1"].get_color() != lines["validation stations, member 0"].get_color()
    plt.close(fig)
    # a short run shows its first epochs (the limit skipped the first three whatever the length)
    fig = learning_curve_figure(log.head(3), 10.0)
    assert fig.axes[0].get_ylim()[1] >= 3.0
    plt.close(fig)


def test_resuming_a_finished_run_for_more_epochs_says_so(tmp_path, patches, capsys):
    """--resume of a finished run with more train.epochs continues without --allow-config-change (the one key
    allowed to change): it says what happens, since the learning-rate schedule follows the new length."""
    assert run_step(tmp_path, patches, "train.epochs=2") == 0
    capsys.readouterr()
    assert run_step(tmp_path, patches, "train.epochs=3", extra=["--resume"]) == 0
    out = capsys.readouterr()
    assert "--resume: train.epochs 2 -> 3: training continues to epoch 3" in out.out + out.err
    assert log_of(tmp_path)["epoch"].tolist() == [1, 2, 3]


def test_resume_gives_the_same_weights(tmp_path, patches):
    sets = ["train.epochs=2", "data.num_workers=0"]
    assert run_step(tmp_path, patches, *sets, out="full") == 0
    assert run_step(tmp_path, patches, *sets, extra=["--stop-after", "1"], out="cut") == 0
    # a run that did not finish keeps its log with its checkpoints (outputs/ holds the finished run's only)
    assert len(pd.read_csv(tmp_path / "cut" / "weights" / ".staging" / "train_log.csv")) == 1
    assert not (tmp_path / "cut" / "outputs" / "train_log.csv").exists()
    assert not (tmp_path / "cut" / "outputs" / "run.json").exists()  # not finished yet
    assert run_step(tmp_path, patches, *sets, extra=["--resume"], out="cut") == 0
    a = torch.load(tmp_path / "full" / "weights" / "current.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "weights" / "current.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    pd.testing.assert_frame_equal(log_of(tmp_path, "full").drop(columns=["seconds", "data_wait_s"]),
                                  log_of(tmp_path, "cut").drop(columns=["seconds", "data_wait_s"]))
    # a finished run resumed with no epoch left: recalibrated and promoted again, its current.pt kept
    assert run_step(tmp_path, patches, *sets, extra=["--resume", "--force"], out="cut") == 0
    c = torch.load(tmp_path / "cut" / "weights" / "current.pt", weights_only=True)
    assert c["epoch"] == 2 and all(torch.equal(c["model"][k], b["model"][k]) for k in b["model"])
    assert torch.load(tmp_path / "cut" / "weights" / "best.pt", weights_only=True)["uncertainty"]["sigma_scale"] > 0
    assert not (tmp_path / "cut" / "weights" / ".staging").exists()
    # a refused --resume (the training config changed) leaves the finished run's record as it was, not "running"
    rec = read_record(tmp_path / "cut" / "outputs")
    assert rec["status"] == "ok"
    assert run_step(tmp_path, patches, *sets, "train.lr=1e-3", extra=["--resume", "--force"], out="cut") == 2
    assert read_record(tmp_path / "cut" / "outputs") == rec


def test_an_interrupted_training_resumes_in_its_moved_checkout(tmp_path, patches, monkeypatch):
    """Training stopped after one epoch, the checkout (patches, weights, records) moved elsewhere, then --resume
    there: the config its checkpoint keeps names the checkout's paths relative to it, so the resume is not refused
    as another config, and it ends where an uninterrupted run would."""
    from shared.core import config

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(patches, a / "p")
    monkeypatch.setattr(config, "REPO_ROOT", a)
    adopt(a / "p", "step02")
    sets = ["train.epochs=2", "data.num_workers=0"]
    assert run_step(a, a / "p", *sets, extra=["--stop-after", "1"], out="cut") == 0
    staged = torch.load(a / "cut" / "weights" / ".staging" / "current.pt", weights_only=True)  # not promoted yet
    assert staged["train_cfg"]["data"]["patch_dir"] == "p" and staged["epoch"] == 1
    shutil.copytree(a, b)
    shutil.rmtree(a)
    monkeypatch.setattr(config, "REPO_ROOT", b)
    assert run_step(b, b / "p", *sets, extra=["--resume"], out="cut") == 0
    assert torch.load(b / "cut" / "weights" / "current.pt", weights_only=True)["epoch"] == 2
    assert len(log_of(b, "cut")) == 2


def test_ensemble_averages_members_and_adds_their_spread(tmp_path, patches):
    """model.members 2: two runs with seeds 0 and 1 in weights/members/m0, m1, then best.pt = their ensemble: the
    mean of the members' predictions, the mixture variance (mean of the members' calibrated variances + variance
    of their means) calibrated on val; its val MSE is at most the members' mean; --stop-after/--resume work
    member by member."""
    from shared.mapping.predict import load_predictor
    from shared.models.ta import TAEnsemble

    assert run_step(tmp_path, patches, "train.epochs=2", "model.members=2", extra=["--stop-after", "1"]) == 0
    w = tmp_path / "run" / "weights"
    assert not (w / "best.pt").exists()  # member 0 stopped after 1 epoch: no ensemble yet
    assert not (w / "members" / "m0" / "run.json").exists()  # nor a finished member
    # --stop-after counts this invocation's epochs over the members: member 0's last epoch and one of member 1's
    assert run_step(tmp_path, patches, "train.epochs=2", "model.members=2", extra=["--resume", "--stop-after", "2"]) == 0
    assert (w / "members" / "m0" / "run.json").exists() and not (w / "members" / "m1" / "run.json").exists()
    m1_log = pd.read_csv(w / "members" / "m1" / ".staging" / "train_log.csv")
    assert not (w / "best.pt").exists() and m1_log["epoch"].tolist() == [1]
    assert run_step(tmp_path, patches, "train.epochs=2", "model.members=2", extra=["--resume"]) == 0
    ens = load_predictor(w / "best.pt")
    m0, m1 = (load_predictor(w / "members" / f"m{k}" / "best.pt") for k in (0, 1))
    assert isinstance(ens.model, TAEnsemble) and len(ens.model.members) == 2
    assert ens.model_cfg["members"] == 2 and m0.model_cfg["members"] == 1
    assert not torch.equal(m0.model.mlp[-1].weight, m1.model.mlp[-1].weight)  # different seeds
    ck = torch.load(w / "best.pt", weights_only=True)
    assert [m["seed"] for m in ck["members"]] == [0, 1]
    assert ck["best_val"] <= (ck["members"][0]["best_val"] + ck["members"][1]["best_val"]) / 2 + 1e-9
    b = batch_view(load_chunk(read_manifest(patches)[1]["val"].files[0]))
    b = {k: v[:50] for k, v in b.items()}
    assert ck["uncertainty"]["distance"]["train_sites"].shape[1] == 2  # the ensemble is calibrated with distance
    assert "cold" in ck["uncertainty"]  # ... and the cold-top term
    for p in (ens, m0, m1):  # the mixture itself (the growth terms, tests/test_se_growth.py, set aside)
        p.distance = p.cold = None
    (z, sd), (z0, sd0), (z1, sd1) = (p.predict_dist(b) for p in (ens, m0, m1))
    np.testing.assert_allclose(z, (z0 + z1) / 2, atol=1e-5)
    mix = np.sqrt((sd0.astype(np.float64) ** 2 + sd1.astype(np.float64) ** 2) / 2 + ((z0 - z1) / 2) ** 2)
    np.testing.assert_allclose(sd, np.minimum(ens.sigma_scale * mix, 1.0), rtol=1e-4)
    assert "ensemble of 2" in ens.sd_source and ck["fusion_residuals"]["resid"].shape == (768 + 256,)
    # each member's folders hold the finished record of its own files, so a member can be mapped or scored alone
    from shared.core.records import check_upstream, read_record

    for k in (0, 1):
        mw = w / "members" / f"m{k}"
        rec = check_upstream(mw, [mw / "best.pt"], "step03")
        assert rec["config"]["ensemble_member"] == f"{k + 1} of 2" and rec["config"]["train"]["seed"] == k
        assert read_record(tmp_path / "run" / "outputs" / "members" / f"m{k}")["signature"] == rec["signature"]
    log = log_of(tmp_path)
    assert log["member"].tolist() == [0, 0, 1, 1] and log["epoch"].tolist() == [1, 2, 1, 2]
    # a checkpoint whose config claims more members than its weights hold is refused before any is built
    bad = tmp_path / "bad.pt"
    torch.save({**ck, "model_cfg": {**ck["model_cfg"], "members": 500}}, bad)
    with pytest.raises(UserError, match="ensemble of 500 but the weights hold 2 member"):
        load_predictor(bad)


def test_refit_with_val_trains_on_train_and_val_and_keeps_the_runs_calibration(tmp_path, patches, capsys):
    """train.refit_with_val: the run as without it (its best model is weights/train_only.pt), then the same model
    trained again from its seed on the train + val rows up to the run's best epoch -> best.pt, with the run's
    standard-error calibration, the input range and fusion residuals of the refit; a resumed finished run keeps
    the run's own best as its starting point; a rerun without the option removes train_only.pt."""
    from shared.mapping.predict import load_predictor

    sets = ["train.epochs=3", "train.refit_epochs=0"]
    assert run_step(tmp_path, patches, *sets, out="plain") == 0
    assert run_step(tmp_path, patches, *sets, "train.refit_with_val=true", out="refit") == 0
    w = tmp_path / "refit" / "weights"
    plain = torch.load(tmp_path / "plain" / "weights" / "best.pt", weights_only=True)
    own = torch.load(w / "train_only.pt", weights_only=True)
    ck = torch.load(w / "best.pt", weights_only=True)
    for k in plain["model"]:  # the run itself is unchanged by the option
        assert torch.equal(plain["model"][k], own["model"][k]), k
    assert ck["refit"]["rows"] == 768 + 256 and ck["refit"]["epochs"] == plain["best_epoch"]
    assert ck["refit"]["mode"] == "from_seed" and ck["refit"]["lr"] is None
    assert "optimizer" not in ck and ck["best_epoch"] == plain["best_epoch"]
    assert not torch.equal(ck["model"]["mlp.0.weight"], own["model"]["mlp.0.weight"])
    refit_log = pd.read_csv(tmp_path / "refit" / "outputs" / "refit_log.csv")
    assert refit_log["epoch"].tolist() == list(range(1, plain["best_epoch"] + 1))
    # the calibration is the run's (val was unseen then); the distance term's stations now include val's
    u, u0 = ck["uncertainty"], own["uncertainty"]
    assert u["sigma_scale"] == u0["sigma_scale"] and u["interval_multipliers"] == u0["interval_multipliers"]
    assert u["cold"] == u0["cold"] and u["distance"]["slope_per_100km"] == u0["distance"]["slope_per_100km"]
    splits = read_manifest(patches)[1]
    ll = np.concatenate([load_chunk(f)["loc"][:, :2].numpy() for s in ("train", "val") for f in splits[s].files])
    np.testing.assert_array_equal(u["distance"]["train_sites"].numpy(), np.unique(ll.astype(np.float64), axis=0))
    assert len(u["distance"]["train_sites"]) > len(u0["distance"]["train_sites"])
    # input range over the train + val rows; fusion residuals of the refit model; val rows are now in-sample
    pred, pred0 = load_predictor(w / "best.pt"), load_predictor(w / "train_only.pt")
    m = pred.model
    with torch.no_grad():
        h = torch.cat([m.head_input(m.encode(b), m.aux_features(b))
                       for s in ("train", "val") for b in (batch_view(load_chunk(f)) for f in splits[s].files)])
    torch.testing.assert_close(m.input_lo, h.min(0).values)
    torch.testing.assert_close(m.input_hi, h.max(0).values)
    vb = [batch_view(load_chunk(f)) for f in splits["val"].files]
    y = np.concatenate([b["y"].numpy() for b in vb])
    z, z0 = (np.concatenate([p.predict_dist({k: v for k, v in b.items() if k != "y"})[0] for b in vb])
             for p in (pred, pred0))
    np.testing.assert_allclose(pred.fusion_residuals["resid"][pred.fusion_residuals["split"] == 1], y - z,
                               rtol=1e-4, atol=1e-5)
    assert np.mean((y - z) ** 2) < np.mean((y - z0) ** 2)
    # a finished refit run resumed: it starts again from its own best (train_only.pt), not from the refit, and
    # keeps the refit of that same run instead of training it again
    capsys.readouterr()
    assert run_step(tmp_path, patches, *sets, "train.refit_with_val=true", extra=["--resume", "--force"],
                    out="refit") == 0
    out = capsys.readouterr()
    assert "refit: kept" in out.out + out.err and "refit epoch" not in out.out + out.err
    again = torch.load(w / "train_only.pt", weights_only=True)
    assert all(torch.equal(again["model"][k], own["model"][k]) for k in own["model"] if k not in ("input_lo", "input_hi"))
    assert all(torch.equal(torch.load(w / "best.pt", weights_only=True)["model"][k], ck["model"][k]) for k in ck["model"])
    # ... and without the option: the run's own best is best.pt again, no train_only.pt is left
    assert run_step(tmp_path, patches, *sets, extra=["--resume", "--force"], out="refit") == 0
    assert not (w / "train_only.pt").exists()
    back = torch.load(w / "best.pt", weights_only=True)
    assert "refit" not in back and all(torch.equal(back["model"][k], own["model"][k]) for k in own["model"])


def test_refit_continues_the_runs_best_model(tmp_path, patches, capsys):
    """train.refit_epochs N > 0: the run's best model continued for N epochs on the train + val rows at
    train.refit_lr (not trained again from the seed); a changed refit plan is not kept on --resume."""
    from shared.mapping.predict import load_predictor

    sets = ["train.epochs=3", "train.refit_with_val=true", "train.refit_epochs=2"]
    assert run_step(tmp_path, patches, *sets, "train.refit_lr=1e-9") == 0
    w = tmp_path / "run" / "weights"
    own = torch.load(w / "train_only.pt", weights_only=True)
    ck = torch.load(w / "best.pt", weights_only=True)
    assert ck["refit"]["mode"] == "continued" and ck["refit"]["epochs"] == 2 and ck["refit"]["lr"] == 1e-9
    log = pd.read_csv(tmp_path / "run" / "outputs" / "refit_log.csv")
    assert log["epoch"].tolist() == [1, 2] and (log["lr"] <= 1e-9).all()
    # at a vanishing learning rate the refit is the run's best model (a model from the seed would be far from it)
    for k in own["model"]:
        if k not in ("input_lo", "input_hi"):  # the refit's range is over the train + val rows
            torch.testing.assert_close(ck["model"][k], own["model"][k], atol=1e-6, rtol=0)
    # another learning rate is another refit: trained again on --resume, and it now fits the val rows better
    capsys.readouterr()
    assert run_step(tmp_path, patches, *sets, "train.refit_lr=3e-3", extra=["--resume", "--force"]) == 0
    out = capsys.readouterr()
    assert "refit: kept" not in out.out + out.err and "refit epoch 2/2" in out.out + out.err
    vb = [batch_view(load_chunk(f)) for f in read_manifest(patches)[1]["val"].files]
    y = np.concatenate([b["y"].numpy() for b in vb])
    z, z0 = (np.concatenate([p.predict_dist({k: v for k, v in b.items() if k != "y"})[0] for b in vb])
             for p in (load_predictor(w / "best.pt"), load_predictor(w / "train_only.pt")))
    assert torch.load(w / "best.pt", weights_only=True)["refit"]["lr"] == 3e-3
    assert np.mean((y - z) ** 2) < np.mean((y - z0) ** 2)


def test_starting_over_an_interrupted_run_says_so(tmp_path, patches, capsys, monkeypatch):
    """The same command without --resume after a stopped run starts over: it says what it discards (and that
    stopping at once keeps it), instead of a silent restart from epoch 1. Stopped before its first epoch ends, the
    staged run is still there to --resume (it was deleted at the start), and Ctrl-C says to add --resume; the
    finished run's train_log.csv is not replaced by a run that did not finish."""
    from shared.training import loop

    assert run_step(tmp_path, patches, "train.epochs=2") == 0
    finished = log_of(tmp_path)
    assert run_step(tmp_path, patches, "train.epochs=2", extra=["--stop-after", "1", "--force"]) == 0
    pd.testing.assert_frame_equal(log_of(tmp_path), finished)  # a run that stopped leaves the finished log
    staged = tmp_path / "run" / "weights" / ".staging"
    before = {f.name: f.read_bytes() for f in staged.iterdir()}
    assert {"best.pt", "current.pt", "train_log.csv"} <= set(before)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    capsys.readouterr()
    assert run_step(tmp_path, patches, "train.epochs=2") == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun the same command with --resume to continue (without --resume it starts over)" in err
    assert {f.name: f.read_bytes() for f in staged.iterdir()} == before
    monkeypatch.undo()
    capsys.readouterr()
    assert run_step(tmp_path, patches, "train.epochs=2", extra=["--force"]) == 0
    out = capsys.readouterr()
    assert "warning: an interrupted run is staged in" in out.out + out.err and "(after epoch 1)" in out.out + out.err
    assert log_of(tmp_path)["epoch"].tolist() == [1, 2]


def test_resume_counts_a_train_key_added_since_with_its_default(tmp_path, patches):
    """A checkpoint written before a train key existed (here train.loc_jitter_km) resumes when the key has its
    default, the value that run trained with; another value is a config change and is refused."""
    assert run_step(tmp_path, patches, "train.epochs=2", extra=["--stop-after", "1"]) == 0
    cur = tmp_path / "run" / "weights" / ".staging" / "current.pt"  # an unfinished run's
    ck = torch.load(cur, weights_only=True)
    del ck["train_cfg"]["train"]["loc_jitter_km"]
    torch.save(ck, cur)
    assert run_step(tmp_path, patches, "train.epochs=2", "train.loc_jitter_km=5", extra=["--resume"]) == 2
    assert run_step(tmp_path, patches, "train.epochs=2", extra=["--resume"]) == 0
    assert log_of(tmp_path)["epoch"].tolist() == [1, 2]


def test_jitter_loc_moves_only_lat_lon_by_the_asked_km():
    """train.loc_jitter_km: lat and lon move by a Gaussian step of that many km per axis (lon scaled by
    cos(lat)); the third loc column, the other keys and the input batch stay as they are; 0 is a no-op."""
    from shared.training.loop import jitter_loc

    n = 200_000
    loc = torch.tensor([[60.0, 127.0, 2000.0]]).repeat(n, 1)
    batch = {"loc": loc, "y": torch.zeros(n)}
    assert jitter_loc(batch, 0.0) is batch
    torch.manual_seed(0)
    out = jitter_loc(batch, 25.0)
    assert torch.equal(batch["loc"], loc) and out["y"] is batch["y"]  # the input batch is not changed
    km_n = (out["loc"][:, 0] - 60.0) * 111.0
    km_e = (out["loc"][:, 1] - 127.0) * 111.0 * 0.5  # cos(60 deg)
    assert abs(float(km_n.std()) - 25.0) < 0.2 and abs(float(km_e.std()) - 25.0) < 0.2
    assert abs(float(km_n.mean())) < 0.2 and abs(float(torch.corrcoef(torch.stack([km_n, km_e]))[0, 1])) < 0.01
    assert torch.equal(out["loc"][:, 2], loc[:, 2])


def test_loc_jitter_reaches_training_and_is_refused_with_cached_features(tmp_path, patches):
    """The option changes what is trained (same seed, other weights); with cached encoder features, which hold
    the exact positions, it is refused before training."""
    assert run_step(tmp_path, patches, "train.epochs=1", out="a") == 0
    assert run_step(tmp_path, patches, "train.epochs=1", "train.loc_jitter_km=25", out="b") == 0
    a, b = (torch.load(tmp_path / o / "weights" / "best.pt", weights_only=True) for o in ("a", "b"))
    assert b["train_cfg"]["train"]["loc_jitter_km"] == 25
    assert not torch.equal(a["model"]["mlp.0.weight"], b["model"]["mlp.0.weight"])
    assert run_step(tmp_path, patches, "train.epochs=1", "train.loc_jitter_km=25", "train.cache_features=true",
                    "model.freeze_encoder=true", out="c") == 2
    assert not (tmp_path / "c" / "weights" / "best.pt").exists()


def test_ensemble_refit_is_calibrated_as_the_train_only_ensemble(tmp_path, patches):
    """model.members 2 with train.refit_with_val: each member refit; the ensemble of the refits carries the
    calibration of the ensemble of the members' train-only models."""
    from shared.mapping.predict import load_predictor

    assert run_step(tmp_path, patches, "train.epochs=2", "model.members=2", out="plain") == 0
    assert run_step(tmp_path, patches, "train.epochs=2", "model.members=2", "train.refit_with_val=true") == 0
    w = tmp_path / "run" / "weights"
    ck = torch.load(w / "best.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain" / "weights" / "best.pt", weights_only=True)
    assert "refit" in ck and ck["uncertainty"]["sigma_scale"] == plain["uncertainty"]["sigma_scale"]
    assert ck["best_val"] == plain["best_val"]
    b = {k: v[:40] for k, v in batch_view(load_chunk(read_manifest(patches)[1]["val"].files[0])).items() if k != "y"}
    ens, m0, m1 = (load_predictor(p) for p in (w / "best.pt", w / "members" / "m0" / "best.pt",
                                                w / "members" / "m1" / "best.pt"))
    assert "refit" in torch.load(w / "members" / "m0" / "best.pt", weights_only=True)
    # each member's record lists its train-only model and refit log (adopting one dropped from it was needed)
    from shared.core.records import check_upstream

    for k in (0, 1):
        mw, mo = w / "members" / f"m{k}", tmp_path / "run" / "outputs" / "members" / f"m{k}"
        check_upstream(mw, [mw / "best.pt", mw / "train_only.pt", mo / "refit_log.csv"], "step03")
    np.testing.assert_allclose(ens.predict_dist(b)[0], (m0.predict_dist(b)[0] + m1.predict_dist(b)[0]) / 2, atol=1e-5)


def test_worker_processes_see_the_same_batches(tmp_path, patches):
    sets = ["train.epochs=1"]
    assert run_step(tmp_path, patches, *sets, "data.num_workers=0", out="w0") == 0
    assert run_step(tmp_path, patches, *sets, "data.num_workers=2", out="w2") == 0
    assert log_of(tmp_path, "w0").val_loss.iloc[0] == pytest.approx(log_of(tmp_path, "w2").val_loss.iloc[0], rel=1e-6)


@pytest.fixture(scope="module")
def clay_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    p = tmp_path_factory.mktemp("clay") / "clay-tiny.ckpt"
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in ClayEncoder("tiny").state_dict().items()}}, p)
    return p


def test_cached_features_match_uncached(tmp_path, patches, clay_ckpt, monkeypatch):
    encoded = []  # rows that went through the encoder: the work the cache saves
    forward = ClayEncoder.forward
    monkeypatch.setattr(ClayEncoder, "forward", lambda self, px, *a: encoded.append(len(px)) or forward(self, px, *a))
    sets = ["train.epochs=2", f"model.clay_ckpt_path={clay_ckpt}", "model.freeze_encoder=true"]
    assert run_step(tmp_path, patches, *sets, "train.cache_features=false", out="plain") == 0
    n_plain, encoded[:] = sum(encoded), []
    assert run_step(tmp_path, patches, *sets, "train.cache_features=true", out="cached") == 0
    plain, cached = log_of(tmp_path, "plain"), log_of(tmp_path, "cached")
    assert cached.val_loss.tolist() == pytest.approx(plain.val_loss.tolist(), rel=1e-4)
    assert cached.train_loss.tolist() == pytest.approx(plain.train_loss.tolist(), rel=1e-4)
    assert sum(encoded) == 768 + 256  # every train and val row encoded once (the residual table uses the cache)...
    # ...instead of once per epoch, the train rows once more at the end (the head's input range), the val rows
    # once more (the standard-error calibration) and every row once more for the fusion's residual table
    assert n_plain == 2 * (768 + 256) + 768 + 256 + (768 + 256)
    from shared.mapping.predict import load_predictor

    res_plain = load_predictor(tmp_path / "plain" / "weights" / "best.pt").fusion_residuals
    res_cached = load_predictor(tmp_path / "cached" / "weights" / "best.pt").fusion_residuals
    assert len(res_cached["resid"]) == 768 + 256 and np.array_equal(res_cached["time_s"], res_plain["time_s"])
    np.testing.assert_allclose(res_cached["resid"], res_plain["resid"], atol=2e-3)
    ck = torch.load(tmp_path / "cached" / "weights" / "best.pt", weights_only=True)
    enc0 = torch.load(clay_ckpt, weights_only=True)["state_dict"]
    assert torch.equal(ck["model"]["encoder.transformer.norm.weight"], enc0["model.encoder.transformer.norm.weight"])
    # the checkpoint fine-tuned from is kept by its bytes: with a new time (a plain copy) the model is up to date
    record = json.loads((tmp_path / "cached" / "outputs" / "run.json").read_text())
    assert record["input_contents"][str(clay_ckpt)] == hashlib.sha1(clay_ckpt.read_bytes()).hexdigest()
    st, best = clay_ckpt.stat(), tmp_path / "cached" / "weights" / "best.pt"
    made = best.stat().st_mtime_ns
    try:
        os.utime(clay_ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert run_step(tmp_path, patches, *sets, "train.cache_features=true", out="cached") == 0
        assert best.stat().st_mtime_ns == made  # not trained again
    finally:
        os.utime(clay_ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))


def _first_step_grads(patches, batch_size):
    """(logged loss, gradients by name) of train_epoch's first step of epoch 1 on this process's share of the
    batch plan, with the loop's model, plan arguments and DDP wrapper (Dist() from the environment)."""
    from shared.core.config import load_config
    from shared.io.patches import read_stats
    from shared.models.ta import build_model
    from shared.stages.step03_train import Config
    from shared.training import loop
    from shared.training.batches import check_split

    torch.set_num_threads(1)
    d, cpu = Dist(), torch.device("cpu")
    cfg = load_config(Config, ROOT / "step03_train_clay" / "config.yaml", [f"data.patch_dir={patches}", *FAST])
    manifest, splits = read_manifest(patches)
    n_ch, psize = len(manifest["channels"]), int(manifest["patch_size"])
    plan_kw, shuffle_kw = loop.plan_kwargs(cfg, d, batch_size)
    plan = ChunkBatches(splits["train"], n_ch, psize, **shuffle_kw, **plan_kw)
    plan.set_epoch(1)
    torch.manual_seed(cfg.train.seed)
    model = build_model(loop.make_model_cfg(cfg, manifest, check_split(splits["train"], n_ch, psize),
                                            read_stats(patches)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # weights stay; the gradients stay in .grad after the step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loss, _, _ = loop.train_epoch(1, loop.wrap_ddp(model, d, cpu), plan, 1, opt, sched,
                                  torch.amp.GradScaler("cpu", enabled=False), cpu, loop.amp_dtype(cfg.train.amp, cpu),
                                  0.0, 1.0, d, params, progress=False)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _ddp_rank(rank, world, port, patches, out):
    from shared.core import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.start("gloo")
    try:
        torch.save(_first_step_grads(patches, 64 // world), out / f"rank{rank}.pt")
    finally:
        distributed.stop()


def test_ddp_two_processes_on_cpu(tmp_path, patches, monkeypatch):
    """step03 under torchrun: only rank 0 reports and writes. 2 ranks x batch 32 average the gradients of the
    same 64 rows as one process with batch 64."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(RUN), "--set", f"data.patch_dir={patches}",
           "--set", f"output.weights_dir={tmp_path / 'weights'}", "--set", f"output.outputs_dir={tmp_path / 'out'}",
           "--set", "train.epochs=3"]
    for s in FAST + ["train.batch_size=32"]:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("epoch 1/3:") == 1  # only rank 0 reports and writes
    # rank 0 alone wrote: the two promoted checkpoints and the run record beside them, no staging left
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["best.pt", "current.pt", "run.json"]
    log = pd.read_csv(tmp_path / "out" / "train_log.csv")
    assert len(log) == 3 and log.val_loss.iloc[-1] < 0.75 * log.val_loss.iloc[0]
    assert torch.load(tmp_path / "weights" / "current.pt", weights_only=True)["epoch"] == 3
    best = torch.load(tmp_path / "weights" / "best.pt", weights_only=True)["model"]
    assert torch.isfinite(best["input_lo"]).all() and (best["input_lo"] <= best["input_hi"]).all()  # range set under DDP

    # The numbers: Adam amplifies float summation-order noise chaotically within a few steps, so compare the
    # first step's gradients (same initial weights, the same 64 rows); they agree to ~1e-6 of each tensor's
    # largest entry.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    threads = torch.get_num_threads()
    try:
        loss1, grads1 = _first_step_grads(patches, 64)
    finally:
        torch.set_num_threads(threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks skip importing torch again (each sets 1 thread, as DataLoader workers do)
    ranks = torch.multiprocessing.start_processes(_ddp_rank, args=(2, port, patches, tmp_path), nprocs=2,
                                                  join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail("the 2 ranks did not finish in 60 s")
    for rank in range(2):
        loss2, grads2 = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert grads2.keys() == grads1.keys() and len(grads1) > 10
        err = {n: float((grads2[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in grads1.items()}
        worst = max(err, key=err.get)
        assert err[worst] < 1e-5, f"rank {rank}: grad of {worst} off by {err[worst]:.2e} of its largest entry"
        assert loss2 == pytest.approx(loss1, rel=1e-5)  # the logged train loss: mean over the ranks


# --------------------------------------------------------------------------- bad input -> exit 2, one line


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_missing_patch_dir(tmp_path, capsys):
    assert run_step(tmp_path, tmp_path / "nowhere") == 2
    assert "nowhere/patch_pt not found" in _err(capsys)


def test_empty_split(tmp_path, capsys):
    d = write_synthetic_patches(tmp_path / "p", {"train": 128, "val": 0}, chunk_rows=128)
    assert run_step(tmp_path, d) == 2
    assert "split 'val' has no rows" in _err(capsys)


def test_split_smaller_than_a_batch_trains_on_one_smaller_batch(tmp_path, capsys):
    d = write_synthetic_patches(tmp_path / "p", {"train": 40, "val": 16}, chunk_rows=64)
    assert run_step(tmp_path, d, "train.batch_size=256", "train.epochs=1") == 0
    assert "train.batch_size 256 lowered to 40" in capsys.readouterr().out
    assert len(log_of(tmp_path)) == 1


def test_chunk_with_wrong_shape_is_named(tmp_path, patches, capsys):
    d = tmp_path / "p"
    shutil.copytree(patches, d)
    adopt(d, "step02")
    f = d / "patch_pt" / "train_chunk_00001.pt"
    c = torch.load(f, weights_only=True)
    c["time7"] = c["time7"][:, :5]
    torch.save(c, f)
    adopt(d, "step02", "test: chunk edited by hand")
    assert run_step(tmp_path, d) == 2
    msg = _err(capsys)
    assert "train_chunk_00001.pt" in msg and "time7" in msg


def test_config_mistakes(tmp_path, patches, capsys, clay_ckpt):
    assert run_step(tmp_path, patches, "model.freeze_encoder=true") == 2
    assert "clay_ckpt_path is null" in _err(capsys)
    assert run_step(tmp_path, patches, f"model.clay_ckpt_path={clay_ckpt}", "train.cache_features=true") == 2
    assert "needs model.freeze_encoder: true" in _err(capsys)
    assert run_step(tmp_path, patches, "train.epoch=3") == 2
    assert "did you mean 'train.epochs'" in _err(capsys)
    assert run_step(tmp_path, patches, extra=["--stop-after", "0"]) == 2  # it ran nothing and said to --resume
    assert "--stop-after: must be 1 or more, got 0" in _err(capsys)
    assert run_step(tmp_path, patches, f"model.clay_ckpt_path={clay_ckpt}", "model.size=small") == 2
    assert "looks like size 'tiny'" in _err(capsys)
    assert run_step(tmp_path, patches, "model.members=0") == 2
    assert "model.members must be >= 1" in _err(capsys)


def test_checkpoint_of_another_model(tmp_path, patches, capsys):
    assert run_step(tmp_path, patches, "train.epochs=1") == 0
    best = tmp_path / "run" / "weights" / "best.pt"
    # A step03 checkpoint is not a Clay checkpoint...
    assert run_step(tmp_path, patches, f"model.clay_ckpt_path={best}", out="x") == 2
    assert "no Clay encoder tensors" in _err(capsys)
    # ...and resuming with another model config is refused, naming what differs.
    assert run_step(tmp_path, patches, "train.epochs=2", "model.head_hidden=32", extra=["--resume"]) == 2
    assert "differs in: head_hidden" in _err(capsys)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, patches, capsys):
    d = tmp_path / "p"
    shutil.copytree(patches, d)
    adopt(d, "step02")
    assert run_step(tmp_path, d, "train.epochs=3", extra=["--stop-after", "1"]) == 0
    staged = tmp_path / "run" / "weights" / ".staging" / "current.pt"  # the unfinished run's checkpoint
    before = staged.read_bytes()
    f = d / "patch_pt" / "train_chunk_00002.pt"
    c = torch.load(f, weights_only=True)
    c["y"][:] = float("nan")
    torch.save(c, f)
    adopt(d, "step02", "test: chunk edited by hand")
    assert run_step(tmp_path, d, "train.epochs=3", extra=["--resume"]) == 2
    msg = _err(capsys)
    assert "NaN" in msg and "epoch 2, batch" in msg
    assert staged.read_bytes() == before
    assert not (tmp_path / "run" / "weights" / "best.pt").exists()  # an unfinished run promotes nothing


def test_a_train_split_at_one_place_is_refused_before_training(tmp_path):
    """Train rows of one station (a split that left one train station): lat/lon have no spread, and positions
    scaled by the 1e-3 floor put every other place thousands of units away (validation RMSE 222 K, exit 0).
    check_split refuses it in one line; the validation split is not held to it."""
    from shared.core.errors import UserError
    from shared.io.patches import load_chunk, read_manifest, save_chunk, write_synthetic_patches
    from shared.training.batches import check_split

    d = write_synthetic_patches(tmp_path / "p", {"train": 64, "val": 32}, chunk_rows=64)
    _, splits = read_manifest(d)
    assert check_split(splits["train"], 19, 9)["loc_std"][0] > 0.05
    for s in ("train", "val"):
        f = splits[s].files[0]
        ch = {k: (v.clone() if hasattr(v, "clone") else v) for k, v in load_chunk(f).items()}
        ch["loc"][:, :2] = torch.tensor([37.57, 126.97])
        save_chunk(f, ch)
    with pytest.raises(UserError, match=r"split 'train' holds rows of 1 location\(s\)"):
        check_split(splits["train"], 19, 9)
    check_split(splits["val"], 19, 9)


def test_a_validation_loss_that_never_moves_is_warned_about(tmp_path, patches, capsys):
    """train.lr 1e-12: training runs and finishes, but says that best.pt is about its initial weights; a run
    that learns says nothing of the kind."""
    from shared.training.loop import flat_validation

    assert flat_validation([{"val_loss": v} for v in (1.0, 0.9995, 0.9992)], 1e-3) is not None
    assert flat_validation([{"val_loss": v} for v in (1.0, 0.998, 0.997)], 1e-3) is None  # 0.3 %: it moved
    assert flat_validation([{"val_loss": v} for v in (1.0, 1.0)], 1e-3) is None  # too few epochs to tell
    assert run_step(tmp_path, patches, "train.epochs=3", "train.lr=1e-12", out="tiny_lr") == 0
    err = capsys.readouterr().err
    assert "warning: the validation loss did not move in 3 epochs" in err and "train.lr 1e-12" in err
    assert run_step(tmp_path, patches, "train.epochs=3", out="normal") == 0
    assert "did not move" not in capsys.readouterr().err
