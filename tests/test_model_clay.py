"""Clay v1.5 encoder: checkpoint layout, loading, forward math, TA model wrapper."""
import datetime
import math

import pytest
import torch
import torch.nn.functional as F

from shared.core.errors import UserError
from shared.io.channels import PATCH_CHANNELS
from shared.models.checkpoint import load_ta_checkpoint
from shared.models.clay import (
    ClayEncoder,
    clay_latlon_encoding,
    clay_time_encoding,
    iso_week,
    load_clay_encoder,
    load_clay_state,
    short_attention,
)
from shared.models.ta import N_TIME7, TAModelConfig, build_model

WAVES = torch.tensor([3.83, 6.21, 10.35, 0.47, 0.64, 1.61])


def _inputs(b=3, c=6, hw=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, hw, hw, generator=g)
    t = clay_time_encoding(torch.tensor([1_600_000_000, 1_650_000_000, 1_700_003_600][:b]))
    ll = clay_latlon_encoding(torch.tensor([33.5, 36.0, 38.9][:b]), torch.tensor([126.5, 127.0, 129.3][:b]))
    return x, t, ll


def test_large_has_official_key_and_parameter_count():
    with torch.device("meta"):
        enc = ClayEncoder("large")
    sd = enc.state_dict()
    assert len(sd) == 265
    assert sum(v.numel() for v in sd.values()) == 311_442_944
    assert sd["cls_token"].shape == (1, 1, 1024)
    assert sd["patch_embedding.weight_generator.fc_weight.weight"].shape == (8 * 8 * 1024, 128)
    assert sd["patch_embedding.weight_generator.encoder.layers.0.self_attn.in_proj_weight"].shape == (384, 128)
    assert sd["transformer.layers.23.0.to_qkv.weight"].shape == (3 * 16 * 64, 1024)
    assert sd["transformer.layers.23.1.net.3.weight"].shape == (1024, 4096)


def _reference_forward(e: ClayEncoder, cube, time, latlon, gsd, waves):
    """The Clay v1.5 computation written out step by step (CLAY.md), independent of forward()."""
    pe = e.patch_embedding
    half = 64
    omega = 1.0 / 10000 ** (torch.arange(half) / (half - 1))
    s = waves[:, None] * omega[None]
    w_enc = pe.fclayer(torch.cat((s.sin(), s.cos()), 1))
    wg = pe.weight_generator
    seq = torch.cat([wg.weight_tokens, w_enc, wg.bias_token], 0)
    out = wg.encoder(seq)
    weights = wg.fc_weight(out[128:-1] + seq[128:-1])
    bias = wg.fc_bias(out[-1])
    c, d, p = len(waves), e.dim, e.patch_size
    kernel = weights.reshape(c, d, p, p).permute(1, 0, 2, 3)
    o = F.conv2d(cube, kernel * 0.02, bias, stride=p)
    b, _, h, w = o.shape
    patches = o.reshape(b, d, h * w).permute(0, 2, 1)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    q = (d - 8) // 4
    om = 1.0 / 10000 ** (2 * (torch.arange(q) / (q - 1)) / (d - 8)) * gsd
    yy, xx = y.flatten()[:, None] * om, x.flatten()[:, None] * om
    pos = torch.cat((xx.sin(), xx.cos(), yy.sin(), yy.cos()), 1)
    enc = torch.cat((pos[None].repeat(b, 1, 1), torch.hstack((time, latlon))[:, None].repeat(1, h * w, 1)), -1)
    z = torch.cat((e.cls_token.repeat(b, 1, 1), patches + enc), 1)
    for attn, ff in e.transformer.layers:
        n = attn.norm(z)
        qkv = [t.reshape(b, z.shape[1], attn.heads, -1).permute(0, 2, 1, 3) for t in attn.to_qkv(n).chunk(3, -1)]
        a = (qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(qkv[0].shape[-1])).softmax(-1) @ qkv[2]
        z = attn.to_out(a.permute(0, 2, 1, 3).reshape(b, z.shape[1], -1)) + z
        z = ff(z) + z
    return e.transformer.norm(z)


def test_forward_matches_step_by_step_reference():
    torch.manual_seed(0)
    e = ClayEncoder("tiny").eval()
    x, t, ll = _inputs(hw=24)  # 3x3 tokens: exercises row/column order of the position encoding
    with torch.no_grad():
        got = e(x, t, ll, 1125.0, WAVES)
        ref = _reference_forward(e, x, t, ll, 1125.0, WAVES)
    assert got.shape == (3, 10, 192)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_two_token_sequence_takes_short_attention_and_matches_the_reference(monkeypatch):
    """TA-2D's 8 x 8 input is one patch token + CLS: the short-sequence path, equal to Clay's computation."""
    import shared.models.clay as clay

    calls = []
    real = clay.short_attention
    monkeypatch.setattr(clay, "short_attention", lambda q, k, v: calls.append(q.shape) or real(q, k, v))
    torch.manual_seed(0)
    e = ClayEncoder("tiny").eval()
    x, t, ll = _inputs(hw=8)
    with torch.no_grad():
        got = e(x, t, ll, 2250.0, WAVES)
        ref = _reference_forward(e, x, t, ll, 2250.0, WAVES)
    assert got.shape == (3, 2, 192)
    assert calls == [(3, 4, 2, 48)] * 6  # every one of the 6 blocks, (B, heads, N, dim_head)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    calls.clear()
    trained = e(x, t, ll, 2250.0, WAVES)  # with gradients (training): scaled_dot_product_attention, as before
    assert calls == [] and trained.requires_grad
    torch.testing.assert_close(trained.detach(), got, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_short_attention_equals_sdpa_values_and_gradients(n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(5, 4, n, 48, generator=g, requires_grad=True) for _ in range(3))
    w = torch.randn(5, 4, n, 48, generator=g)
    got = short_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lightning_checkpoint_roundtrip_ignores_other_prefixes(tmp_path):
    torch.manual_seed(0)
    e = ClayEncoder("tiny").eval()
    sd = {f"model.encoder.{k}": v for k, v in e.state_dict().items()}
    sd["model.decoder.mask_patch"] = torch.randn(96)  # decoys a real Clay checkpoint also holds
    sd["model.decoder.transformer.norm.weight"] = torch.randn(96)
    sd["model.proj.weight"] = torch.randn(1024, 192)
    sd["model.teacher.blocks.0.norm1.weight"] = torch.randn(1024)
    path = tmp_path / "clay-like.ckpt"
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 100}, path)
    loaded = load_clay_encoder(path, "tiny").eval()
    x, t, ll = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ll, 2000.0, WAVES), e(x, t, ll, 2000.0, WAVES))


def test_bare_state_dict_with_flat_cls_token(tmp_path):
    e = ClayEncoder("tiny")
    sd = e.state_dict()
    sd["cls_token"] = sd["cls_token"].reshape(-1)  # (D,) as in some Clay versions
    torch.save(sd, tmp_path / "enc.pt")
    loaded = load_clay_encoder(tmp_path / "enc.pt", "tiny")
    assert loaded.cls_token.shape == (1, 1, 192)
    assert torch.equal(loaded.cls_token, e.cls_token)


def test_wrong_size_names_keys_and_detected_size(tmp_path):
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in ClayEncoder("tiny").state_dict().items()}},
               tmp_path / "tiny.ckpt")
    with pytest.raises(UserError) as ei:
        load_clay_state(tmp_path / "tiny.ckpt", "base")
    msg = str(ei.value)
    assert "looks like size 'tiny'" in msg
    assert "cls_token (1, 1, 192) != (1, 1, 768)" in msg
    assert "missing" in msg and "transformer.layers.6." in msg


def test_not_a_clay_file(tmp_path):
    torch.save({"state_dict": {"model.backbone.w": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no Clay encoder tensors"):
        load_clay_state(tmp_path / "other.ckpt", "tiny")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00\x01not a checkpoint")
    with pytest.raises(UserError, match="corrupted Clay checkpoint"):
        load_clay_state(tmp_path / "junk.ckpt", "tiny")
    (tmp_path / "text.ckpt").write_bytes(b"not a checkpoint")  # text: named as such
    with pytest.raises(UserError, match="text.ckpt: not a PyTorch file but a text file"):
        load_clay_state(tmp_path / "text.ckpt", "tiny")


def test_kernel_cache_reused_and_invalidated():
    torch.manual_seed(0)
    e = ClayEncoder("tiny").eval()
    x, t, ll = _inputs()
    with torch.no_grad():
        a = e(x, t, ll, 2000.0, WAVES)
        cached = e._kernel_cache[1]
        e(x, t, ll, 2000.0, WAVES)
        assert e._kernel_cache[1] is cached  # same waves, same weights: not regenerated
        e.patch_embedding.fclayer.l1.bias.add_(0.5)  # an optimizer step changes weights in place
        b = e(x, t, ll, 2000.0, WAVES)
    assert e._kernel_cache[1] is not cached and not torch.allclose(a, b)
    e.train()
    assert e._kernel_cache is None
    # Frozen weights: cached even while gradients flow to something else.
    e.requires_grad_(False)
    x.requires_grad_(True)
    e(x, t, ll, 2000.0, WAVES).sum().backward()
    assert e._kernel_cache is not None and x.grad is not None


def test_time_and_latlon_encodings():
    rng = torch.Generator().manual_seed(0)
    ts = torch.randint(0, 2_500_000_000, (2000,), generator=rng)
    ref = torch.tensor([datetime.datetime.fromtimestamp(int(s), datetime.UTC).isocalendar()[1] for s in ts])
    assert torch.equal(iso_week(ts), ref)
    # 2021-01-01 06:30 UTC is in ISO week 53 of 2020.
    t = int(datetime.datetime(2021, 1, 1, 6, 30, tzinfo=datetime.UTC).timestamp())
    enc = clay_time_encoding(torch.tensor([t]))[0]
    w, h = 53 * 2 * math.pi / 52, 6.5 * 2 * math.pi / 24
    torch.testing.assert_close(enc, torch.tensor([math.sin(w), math.cos(w), math.sin(h), math.cos(h)]))
    ll = clay_latlon_encoding(torch.tensor([30.0]), torch.tensor([-90.0]))[0]
    torch.testing.assert_close(ll, torch.tensor([0.5, math.sqrt(3) / 2, -1.0, 0.0]), atol=1e-6, rtol=0)


def _batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(b, 19, 9, 9, generator=g), "time7": torch.randn(b, 7, generator=g),
            "loc": torch.tensor([[36.0, 127.0, 2000.0]]).repeat(b, 1), "landcover_onehot": torch.eye(17)[:b],
            "site": torch.rand(b, 7, generator=g), "time_unix": torch.full((b,), 1_700_000_000), "y": torch.randn(b, generator=g)}


@pytest.mark.parametrize("channels,n_enc", [("spectral", 16), ("all", 19)])
def test_ta_model_encode_head_equals_forward(channels, n_enc):
    torch.manual_seed(0)
    m = build_model(TAModelConfig(encoder_channels=channels).to_dict()).eval()
    assert len(m.waves) == n_enc
    batch = _batch()
    with torch.no_grad():
        full = m(batch)
        split = m.head(m.encode(batch), batch)
        via_cache = m({**batch, "features": m.encode(batch), "aux": m.aux_features(batch)})
    assert full.shape == (5,)
    torch.testing.assert_close(full, split)
    torch.testing.assert_close(full, via_cache)


@pytest.mark.parametrize("channels,patch", [("spectral", 9), ("all", 9), ("spectral", 8)])
def test_inference_folds_channels_resize_and_patch_kernel_into_one_product(channels, patch):
    """Under inference_mode the encoder channels' selection, the 9 -> 8 bilinear resize and the 8 x 8 patch kernel
    are one matrix product: the same embedding and outputs as the resize and the convolution (no_grad), to float
    rounding; the input channels outside the encoder's have zero weight; the bias is the kernel's."""
    torch.manual_seed(0)
    m = build_model(TAModelConfig(encoder_channels=channels, uncertainty="gaussian").to_dict()).eval()
    batch = _batch(b=16)
    batch["x"] = batch["x"][..., :patch, :patch].contiguous()
    with torch.no_grad():
        ref, ref_out = m.encode(batch), m(batch, with_logvar=True)
    with torch.inference_mode():
        fold, fold_out = m.encode(batch), m(batch, with_logvar=True)
        weight, bias = m.folded_patch_kernel(patch)
    assert weight.shape == (m.encoder.dim, 19 * patch * patch)
    assert not torch.equal(fold, ref)  # another order of the sums: the folded path did run
    torch.testing.assert_close(fold, ref, atol=2e-5, rtol=1e-5)
    for a, b in zip(fold_out, ref_out):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(bias, m.encoder._kernel(m.waves)[1])
    unused = sorted(set(range(19)) - set(m.enc_idx.tolist()))
    assert (weight.reshape(-1, 19, patch * patch)[:, unused] == 0).all() and len(unused) == 19 - len(m.waves)


def test_mean_pool_is_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    cls_m = build_model(TAModelConfig(resize_to=16).to_dict()).eval()
    mean_m = build_model(TAModelConfig(resize_to=16, pool="mean").to_dict()).eval()
    mean_m.load_state_dict(cls_m.state_dict())
    batch = _batch()
    x = F.interpolate(batch["x"].index_select(1, cls_m.enc_idx), size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        tokens = cls_m.encoder(x, clay_time_encoding(batch["time_unix"]),
                               clay_latlon_encoding(batch["loc"][:, 0], batch["loc"][:, 1]), cls_m.enc_gsd, cls_m.waves)
        assert tokens.shape[1] == 1 + 4
        torch.testing.assert_close(cls_m.encode(batch), tokens[:, 0])
        torch.testing.assert_close(mean_m.encode(batch), tokens[:, 1:].mean(1))
        assert not torch.allclose(mean_m.encode(batch), cls_m.encode(batch))
    with pytest.raises(UserError, match="model.pool"):
        build_model(TAModelConfig(pool="max").to_dict())


def test_ta_checkpoint_rebuilds_model_and_rejects_others(tmp_path):
    torch.manual_seed(0)
    cfg = TAModelConfig(size="tiny", resize_to=8, head_hidden=32).to_dict()
    m = build_model(cfg).eval()
    torch.save({"format": "ta2d-step03", "model": m.state_dict(), "model_cfg": cfg, "norm": {}}, tmp_path / "ta.pt")
    m2, ck = load_ta_checkpoint(tmp_path / "ta.pt")
    b = _batch()
    with torch.no_grad():
        assert torch.equal(m(b), m2(b))
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in ClayEncoder("tiny").state_dict().items()}},
               tmp_path / "clay.ckpt")
    with pytest.raises(UserError, match="not a TA-2D step03 checkpoint"):
        load_ta_checkpoint(tmp_path / "clay.ckpt")
    torch.save({"format": "ta2d-step03", "model": {}, "model_cfg": {**cfg, "type": "unet"}}, tmp_path / "unet.pt")
    with pytest.raises(UserError, match="'unet' is not supported"):
        load_ta_checkpoint(tmp_path / "unet.pt")


@pytest.mark.parametrize("location,n_loc", [("latlon", 2), ("site", 7), ("both", 9)])
def test_location_inputs(location, n_loc):
    torch.manual_seed(0)
    base = build_model(TAModelConfig(location="latlon").to_dict())
    m = build_model(TAModelConfig(location=location).to_dict()).eval()
    assert m.n_aux == base.n_aux - 2 + n_loc
    b = _batch()
    with torch.no_grad():
        out = m(b)
        assert out.shape == (5,) and torch.isfinite(out).all()
        torch.testing.assert_close(out, m({**b, "features": m.encode(b), "aux": m.aux_features(b)}))
        moved = {**b, "loc": b["loc"] + torch.tensor([1.0, 1.0, 0.0])}
        other_site = {**b, "site": b["site"] + 1}
        # lat/lon reach the model only with latlon/both (head and encoder); site only with site/both
        assert torch.equal(m(moved), out) == (location == "site")
        assert torch.equal(m(other_site), out) == (location == "latlon")
    if location != "latlon":
        with pytest.raises(UserError, match="'site' has 5 features"):
            m({**b, "site": b["site"][:, :5]})


def test_old_model_cfg_rebuilds_as_latlon(tmp_path):
    torch.manual_seed(0)
    old = TAModelConfig(location="latlon").to_dict()
    del old["location"], old["site_features"]  # as a checkpoint written before site features
    cfg = TAModelConfig.from_dict(old)
    assert cfg.location == "latlon" and cfg.site_features == []
    m = build_model(old).eval()
    assert m.n_aux == N_TIME7 + 2 + 17 + 9 + 32
    torch.save({"format": "ta2d-step03", "model": m.state_dict(), "model_cfg": old, "norm": {}}, tmp_path / "old.pt")
    m2, _ = load_ta_checkpoint(tmp_path / "old.pt")
    b = _batch()
    del b["site"]  # a latlon model never reads it
    with torch.no_grad():
        assert torch.equal(m(b), m2(b))
    assert TAModelConfig().location == "both"  # the default for new models
    with pytest.raises(UserError, match="model.location"):
        build_model(TAModelConfig(location="xyz").to_dict())
    with pytest.raises(UserError, match="needs site features"):
        build_model({**old, "location": "site"})


@pytest.mark.parametrize("location", ["latlon", "both"])
def test_lapse_term_lowers_the_output_with_the_centre_dem(location):
    """The output = head + (-lapse x lapse_scale) x centre DEM z-score (the batch's station ``height`` where it has
    one), in the forward and the cached-feature path;
    lapse_scale comes from the statistics; checkpoints written before the lapse term rebuild without it."""
    from shared.training.loop import lapse_scale

    stats = {"channels": ["BT13", "DEM"], "input_std": [5.0, 400.0], "target_std": 8.0}
    assert lapse_scale(stats) == pytest.approx(0.4 / 8.0)  # 400 m = 0.4 km per DEM z-score, 8 K per TA z-score
    torch.manual_seed(0)
    m = build_model(TAModelConfig(location=location, lapse_rate_K_per_km=6.5, lapse_scale=0.05).to_dict()).eval()
    with torch.no_grad():
        last = m.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(0.25)  # the head alone says 0.25 everywhere
    b = _batch()
    c = 9 // 2
    dem = PATCH_CHANNELS.index("DEM")
    b["x"][:, dem, c, c] = torch.tensor([-1.0, 0.0, 1.0, 2.0, 7.0])
    with torch.no_grad():
        out = m(b)
        torch.testing.assert_close(out, 0.25 - 6.5 * 0.05 * b["x"][:, dem, c, c])
        torch.testing.assert_close(out, m({**b, "features": m.encode(b), "aux": m.aux_features(b)}))
        # a station row: the lapse term takes the station's own height instead of the pixel's DEM
        h = torch.tensor([-2.0, 0.5, 1.0, -1.0, 3.0])
        at_station = m({**b, "height": h})
        torch.testing.assert_close(at_station, 0.25 - 6.5 * 0.05 * h)
        torch.testing.assert_close(at_station, m({**b, "height": h, "features": m.encode(b), "aux": m.aux_features(b)}))
    old = TAModelConfig(location=location).to_dict()
    del old["lapse_rate_K_per_km"], old["lapse_scale"]  # as a checkpoint written before the lapse term
    assert build_model(old).lapse_z == 0.0
    assert TAModelConfig().lapse_rate_K_per_km == 6.5


def test_clamp_inputs_bounds_the_mean_head_only(tmp_path):
    """With ``clamp_inputs`` the mean head sees its inputs clamped to the range set after training: a value beyond it
    predicts what the edge predicts; the lapse term keeps the raw DEM and the variance head the raw inputs. Before
    the range is set the clamp changes nothing; older checkpoints rebuild without it; a NaN range is refused."""
    torch.manual_seed(0)
    cfg = TAModelConfig(location="both", lapse_rate_K_per_km=6.5, lapse_scale=0.05).to_dict()
    assert cfg["clamp_inputs"] is True
    m = build_model(cfg).eval()
    plain = build_model({**cfg, "clamp_inputs": False}).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("input_")})
    b = _batch()
    with torch.no_grad():
        torch.testing.assert_close(m(b), plain(b))  # no range yet: +-inf
        h = m.head_input(m.encode(b), m.aux_features(b))
        m.set_input_range(h.min(0).values, h.max(0).values)
        torch.testing.assert_close(m(b), plain(b))  # every row inside its own range
        n_pre = N_TIME7 + 2  # the site columns follow time7 and lat/lon in the head's aux inputs
        col = m.feature_dim + n_pre  # coast_dist
        edge, far = {**b, "site": b["site"].clone()}, {**b, "site": b["site"].clone()}
        edge["site"][:, 0] = h[:, col].min()
        far["site"][:, 0] = -50.0  # far out at sea: beyond every training row
        torch.testing.assert_close(m(far), m(edge))
        assert not torch.allclose(plain(far), plain(edge))  # unclamped, the MLP extrapolates
        # the variance: the head on the clamped inputs (as at the edge) + (unclamped - clamped mean)^2
        _, lv_far = m(far, with_logvar=True)
        _, lv_edge = m(edge, with_logvar=True)
        ext = plain(far) - m(far)
        assert (ext.abs() > 1e-3).all()
        torch.testing.assert_close(lv_far, torch.log(lv_edge.exp() + ext.pow(2)))
        _, lv_in = m(b, with_logvar=True)
        torch.testing.assert_close(lv_in, plain(b, with_logvar=True)[1])  # inside the range: the head alone
        raw = build_model({**cfg, "extrapolation_variance": False}).eval()
        raw.load_state_dict(m.state_dict())
        torch.testing.assert_close(raw(far, with_logvar=True)[1], plain(far, with_logvar=True)[1])  # head on raw
        m.train()  # training: no extrapolation term (dropout would make the two means differ)
        torch.testing.assert_close(m(far, with_logvar=True)[1], lv_edge)
        m.eval()
        # the lapse term takes the raw DEM: a constant head plus lapse x DEM, even beyond the range
        last = m.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(0.25)
        c, dem = 9 // 2, PATCH_CHANNELS.index("DEM")
        high = {**b, "x": b["x"].clone()}
        high["x"][:, dem, c, c] = 40.0
        torch.testing.assert_close(m(high), 0.25 - 6.5 * 0.05 * high["x"][:, dem, c, c])
    torch.save({"format": "ta2d-step03", "model": m.state_dict(), "model_cfg": cfg, "norm": {}}, tmp_path / "ta.pt")
    m2, _ = load_ta_checkpoint(tmp_path / "ta.pt")
    torch.testing.assert_close(m2.input_lo, m.input_lo)
    bad = m.state_dict()
    bad["input_lo"] = bad["input_lo"].clone()
    bad["input_lo"][3] = float("nan")
    torch.save({"format": "ta2d-step03", "model": bad, "model_cfg": cfg, "norm": {}}, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="input_lo/_hi is not a valid range"):
        load_ta_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="finite with lo <= hi"):
        m.set_input_range(m.input_hi, m.input_lo - 1)
    old = dict(cfg)
    del old["clamp_inputs"], old["extrapolation_variance"]  # as a checkpoint written before the clamp
    assert build_model(old).clamp_inputs is False and "input_lo" not in build_model(old).state_dict()
    assert build_model(old).extrapolation_variance is False
    old = dict(cfg)
    del old["extrapolation_variance"]  # written with the clamp, before the extrapolation term: raw variance head
    assert build_model(old).clamp_inputs is True and build_model(old).extrapolation_variance is False
    assert build_model({**cfg, "clamp_inputs": False}).extrapolation_variance is False  # only with the clamp
