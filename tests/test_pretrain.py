"""Self-supervised pretraining (shared/pretrain.py) on the tiny demo world: masking, loss, checkpoint, resume."""
import os
from pathlib import Path

import numpy as np
import torch
from conftest import ROOT, STAGES

YAML = ROOT / "step03_train_clay" / "pretrain.yaml"


def _argv(tiny_index, tiny_patches, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--config", str(YAML), "--force",
            "--set", f"data.index_dir={tiny_index}", "--set", f"data.patch_dir={tiny_patches}",
            "--set", "data.tile_px=32", "--set", "data.source_px=0", "--set", "data.max_images=4",
            "--set", "data.tiles_per_image=16", "--set", "model.decoder_dim=64", "--set", "model.decoder_depth=1",
            "--set", f"train.steps={steps}", "--set", "train.batch_size=16", "--set", "train.lr=2e-3",
            "--set", "train.warmup_steps=5", "--set", "train.ckpt_every=10", "--set", "train.recon_tiles=2",
            "--set", "train.max_minutes=0", "--set", "train.num_threads=1",
            "--set", f"output.weights_dir={out / 'weights'}", "--set", f"output.outputs_dir={out / 'outputs'}",
            *extra]


def _run(argv) -> int:
    """step03's run.py with a ``mode: pretrain`` config, in-process."""
    from shared.core.cli import run_main
    from shared.core.runner import execute

    def main(a):
        return execute(STAGES["step03_train_clay"], a)

    try:
        run_main(main, argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_masking_keeps_a_quarter_of_the_tokens():
    from shared.models.mae import ClayMAE, random_masking

    masked, visible = random_masking(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert masked.shape == (5, 12) and visible.shape == (5, 4)
    both = torch.cat([masked, visible], 1).sort(1).values
    assert torch.equal(both, torch.arange(16).expand(5, -1))  # a partition of the 16 tokens
    assert len({tuple(r) for r in masked.tolist()}) > 1  # a new mask per sample

    torch.manual_seed(0)
    m = ClayMAE("tiny", decoder_dim=32, decoder_depth=1, decoder_heads=2, decoder_dim_head=16)
    x = torch.randn(3, 16, 32, 32)
    loss, recon, masked = m(x, torch.zeros(3, 4), torch.zeros(3, 4), 1125.0, torch.linspace(0.5, 13, 16))
    assert recon.shape == (3, 16, 16, 64) and masked.shape == (3, 12)
    # token 5 of a 4x4 grid is row 1, column 1 (row-major, as the encoder's tokens)
    p = m.patchify(x)
    assert torch.equal(p[1, 5, 3].reshape(8, 8), x[1, 3, 8:16, 8:16])


def test_encode_visible_matches_the_encoder_on_the_same_tokens():
    """Embedding only the visible patches equals the encoder's conv path on those tokens."""
    from shared.models.clay import ClayEncoder
    from shared.models.mae import encode_visible

    torch.manual_seed(0)
    enc = ClayEncoder("tiny").eval()
    x, waves = torch.randn(2, 16, 24, 24), torch.linspace(0.5, 13, 16)
    t, ll = torch.randn(2, 4), torch.randn(2, 4)
    perm = torch.stack([torch.randperm(9), torch.randperm(9)])  # every token, shuffled
    with torch.no_grad():
        full = enc(x, t, ll, 1125.0, waves)  # (2, 1 + 9, D)
        vis = encode_visible(enc, x, t, ll, 1125.0, waves, perm)
    # attention is permutation-equivariant: CLS unchanged, token j of vis is token perm[j] of full
    torch.testing.assert_close(vis[:, 0], full[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vis[:, 1:], torch.gather(full[:, 1:], 1, perm[:, :, None].expand(-1, -1, 192)),
                               rtol=1e-4, atol=1e-5)


def test_pretrain_loss_falls_ckpt_loads_strict_and_resume_matches(tiny_index, tiny_patches, tmp_path):
    import pandas as pd

    from shared.models.clay import load_clay_encoder

    full = tmp_path / "full"
    assert _run(_argv(tiny_index, tiny_patches, full, 40)) == 0
    log = pd.read_csv(full / "outputs" / "pretrain_log.csv")
    assert len(log) == 40
    assert log["loss"].iloc[-10:].mean() < 0.85 * log["loss"].iloc[:5].mean()
    assert (full / "outputs" / "recon.png").stat().st_size > 1000

    ckpt = full / "weights" / "pretrain_clay.ckpt"
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("model.decoder.mask_patch") for k in sd)
    assert any(k.startswith("model.decoder.embed_to_pixels.weight_generator.") for k in sd)
    enc = load_clay_encoder(ckpt, "tiny")  # strict, through the loader step03 uses
    assert torch.equal(enc.cls_token, sd["model.encoder.cls_token"])
    _raw_copied_without_times_keeps_the_pretraining(_argv(tiny_index, tiny_patches, full, 40), ckpt)

    # interrupted after 20 steps, resumed: same weights as the uninterrupted run
    part = tmp_path / "part"
    assert _run(_argv(tiny_index, tiny_patches, part, 40, "--stop-after", "20")) == 0
    assert not (part / "weights" / "pretrain_clay.ckpt").exists()
    assert _run(_argv(tiny_index, tiny_patches, part, 40, "--resume")) == 0
    sd2 = torch.load(part / "weights" / "pretrain_clay.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for k in ("model.encoder.transformer.layers.0.0.to_qkv.weight", "model.decoder.mask_patch"):
        torch.testing.assert_close(sd2[k], sd[k], rtol=1e-4, atol=1e-5)
    assert len(pd.read_csv(part / "outputs" / "pretrain_log.csv")) == 40


def _raw_copied_without_times_keeps_the_pretraining(argv, ckpt: Path) -> None:
    """The raw data pretraining read (static.nc, the train images) with new times and the same bytes, as after a
    plain ``cp`` of the checkout: the run is up to date (its record keeps their SHA-1); an image with other bytes
    of the same size makes it run again. The files' times are put back for the other tests."""
    import json

    from shared.core.config import load_config
    from shared.stages import step03_pretrain

    argv = [a for a in argv if a != "--force"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(step03_pretrain.PretrainConfig, YAML, sets)
    raw = step03_pretrain.hashed(cfg)
    assert len(raw) >= 2 and raw[0].name == "static.nc" and all(p.name.startswith("gk2a_") for p in raw[1:])
    kept = json.loads((ckpt.parents[1] / "outputs" / "run.json").read_text())["input_contents"]
    assert sum(k.endswith(".nc") for k in kept) == len(raw)
    times = {p: p.stat() for p in raw}
    before = ckpt.stat().st_mtime_ns
    try:
        for p, st in times.items():
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert _run(argv) == 0 and ckpt.stat().st_mtime_ns == before  # up to date: nothing pretrained again
        from shared.core.runner import stage_record

        assert stage_record(step03_pretrain.STAGE, cfg).stale_reasons() == []  # the new times now recorded
        img = raw[1]
        data = img.read_bytes()
        try:
            img.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
            assert stage_record(step03_pretrain.STAGE, cfg).stale_reasons() == [f"inputs changed: {img}"]
        finally:
            img.write_bytes(data)
    finally:
        for p, st in times.items():
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_pretrain_uses_train_times_only_and_bad_input_exits_2(tiny_index, tmp_path):
    import pandas as pd

    from shared.training.pretrain import train_times

    df, _ = train_times(tiny_index)
    train = set(pd.to_datetime(pd.read_csv(tiny_index / "index_train.csv")["sat_time_utc"]))
    assert set(df["sat_time_utc"]) <= train and len(df) == df["sat_time_utc"].nunique()
    rc = _run(["--config", str(YAML), "--set", f"data.index_dir={tmp_path / 'nope'}",
               "--set", f"output.outputs_dir={tmp_path / 'o'}"])
    assert rc == 2
    assert _run(["--config", str(YAML), "--set", "model.mask_ratio=1.5",
                 "--set", f"output.outputs_dir={tmp_path / 'o'}"]) == 2


def test_tiles_are_centred_on_land_unless_asked_otherwise(tiny_index, tiny_patches):
    import json

    from shared.io.raw import read_static
    from shared.stages.step03_pretrain import PretrainDataCfg
    from shared.training.pretrain import sample_tiles

    static = read_static(json.loads((tiny_index / "splits.json").read_text())["static"])
    assert 0.05 < static.lsmask.mean() < 0.95  # the tiny world has land and sea
    kw = dict(index_dir=tiny_index, patch_dir=tiny_patches, tile_px=16, source_px=18, max_images=2,
              tiles_per_image=64)
    on_land = {}
    for centre in ("land", "any"):
        tiles = sample_tiles(PretrainDataCfg(centre=centre, **kw), log=lambda *_: None)
        y, x = tiles["yx"].T
        on_land[centre] = static.lsmask[y, x].mean()
        assert tiles["x"].shape[1:] == (16, 16, 16) and len(tiles["yx"]) == len(tiles["x"])
        np.testing.assert_allclose(tiles["lat"].numpy(), static.lat[y, x], rtol=1e-6)
    assert on_land["land"] == 1.0 and on_land["any"] < 1.0


def test_step03_run_py_dispatches_pretrain_mode(tmp_path, capsys):
    """step03's run.py hands a `mode: pretrain` config to the pretraining stage (its keys, its checks)."""
    from conftest import run_step

    rc = run_step("step03_train_clay", "--config", str(ROOT / "step03_train_clay" / "pretrain.yaml"),
                  "--set", "model.mask_ratio=1.5", "--set", f"output.outputs_dir={tmp_path / 'o'}")
    err = capsys.readouterr().err
    assert rc == 2 and "mask_ratio" in err
    rc = run_step("step03_train_clay", "--set", "data.tile_px=32")  # a pretrain-only key is unknown in train mode
    assert rc == 2 and "unknown config key 'data.tile_px'" in capsys.readouterr().err


def test_an_interrupted_pretraining_can_be_extended_with_allow_config_change(tiny_index, tiny_patches, tmp_path,
                                                                            capsys):
    """--resume with more train.steps: refused naming the change, or continued with --allow-config-change (the flag
    was listed by --help but refused as an unknown argument); a changed model key cannot be resumed."""
    import pandas as pd

    out = tmp_path / "ext"
    assert _run(_argv(tiny_index, tiny_patches, out, 10, "--stop-after", "5")) == 0
    capsys.readouterr()
    assert _run(_argv(tiny_index, tiny_patches, out, 12, "--resume")) == 2
    err = capsys.readouterr().err
    assert "was written with another config (train.steps: 10 -> 12)" in err and "--allow-config-change" in err
    assert _run(_argv(tiny_index, tiny_patches, out, 12, "--resume", "--set", "model.decoder_depth=2",
                      "--allow-config-change")) == 2
    assert "model and data keys cannot change on --resume" in capsys.readouterr().err
    assert _run(_argv(tiny_index, tiny_patches, out, 12, "--resume", "--allow-config-change")) == 0
    assert len(pd.read_csv(out / "outputs" / "pretrain_log.csv")) == 12
