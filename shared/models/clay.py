"""Clay v1.5-compatible encoder, key for key (see ``../shared/CLAY.md``).

The parameter names and shapes equal those of the official checkpoint's
``model.encoder.*`` tensors, so :func:`load_clay_encoder` loads
``clay-v1.5.ckpt`` with ``strict=True``. Only the inference path is
implemented (mask ratio 0, no shuffle): ``forward`` returns every token,
the CLS embedding is token 0.

Inputs of :meth:`ClayEncoder.forward`:

* ``pixels (B, C, H, W)`` normalised bands, ``H`` and ``W`` multiples of the
  patch size;
* ``time (B, 4)`` = ``[sin week, cos week, sin hour, cos hour]``
  (:func:`clay_time_encoding`);
* ``latlon (B, 4)`` = ``[sin lat, cos lat, sin lon, cos lon]``
  (:func:`clay_latlon_encoding`);
* ``gsd`` metres per pixel of ``pixels`` (float);
* ``waves (C,)`` central wavelength of each band in µm.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.core.errors import UserError
from shared.io.torch_files import load_torch_file, save_torch_file

__all__ = [
    "CLAY_SIZES",
    "ClayEncoder",
    "load_clay_encoder",
    "load_clay_state",
    "encoder_state_from_checkpoint",
    "posemb_sincos_1d",
    "posemb_sincos_2d_with_gsd",
    "clay_time_encoding",
    "clay_latlon_encoding",
]

#: Encoder hyper-parameters of the Clay v1.5 sizes (patch 8 for all).
CLAY_SIZES: dict[str, dict] = {
    "tiny": dict(dim=192, depth=6, heads=4, dim_head=48, mlp_ratio=2),
    "small": dict(dim=384, depth=6, heads=6, dim_head=64, mlp_ratio=2),
    "base": dict(dim=768, depth=12, heads=12, dim_head=64, mlp_ratio=4),
    "large": dict(dim=1024, depth=24, heads=16, dim_head=64, mlp_ratio=4),
}

WAVE_DIM = 128  # width of the wavelength tokens of the dynamic patch embedding
NUM_LATENT_TOKENS = 128  # learned tokens beside the wave tokens in the weight generator


# --------------------------------------------------------------------------- encodings


def posemb_sincos_1d(waves: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Wavelength embedding ``(C,) µm -> (C, dim)`` = ``[sin(w·ω), cos(w·ω)]``."""
    half = dim // 2
    omega = torch.arange(half, device=waves.device, dtype=torch.float32) / (half - 1)
    omega = 1.0 / temperature**omega
    scaled = waves.float()[:, None] * omega[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1)


def posemb_sincos_2d_with_gsd(h: int, w: int, dim: int, gsd: float, temperature: float = 10000.0,
                              device=None) -> torch.Tensor:
    """Patch-grid position encoding scaled by gsd: ``(h·w, dim)``, row-major tokens.

    ``pe = [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]`` with x the column and y
    the row index, ``ω = gsd / 10000**(2·k/dim)`` for ``k = i/(dim/4 - 1)``.
    """
    if dim % 4:
        raise ValueError(f"position encoding width must be a multiple of 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    q = dim // 4
    omega = torch.arange(q, device=device, dtype=torch.float32) / (q - 1)
    omega = 1.0 / temperature ** (2 * omega / dim) * float(gsd)
    y = y.flatten()[:, None].float() * omega[None, :]
    x = x.flatten()[:, None].float() * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


def _civil_from_days(days: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proleptic Gregorian (year, month, day) of int64 days since 1970-01-01 (H. Hinnant)."""
    z = days + 719468
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097
    yoe = torch.div(doe - doe // 1460 + doe // 36524 - doe // 146096, 365, rounding_mode="floor")
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = torch.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2).long()
    return year, month, day


def _days_from_jan1(year: torch.Tensor) -> torch.Tensor:
    """int64 days since 1970-01-01 of 1 January of ``year``."""
    y = year - 1  # January counts in the previous March-based year
    era = torch.div(y, 400, rounding_mode="floor")
    yoe = y - era * 400
    doe = yoe * 365 + yoe // 4 - yoe // 100 + 306  # 306 = day of 1 Jan in the March-based year
    return era * 146097 + doe - 719468


def iso_week(unix_seconds: torch.Tensor) -> torch.Tensor:
    """ISO-8601 week number (1..53) of UTC unix times, vectorised (int64)."""
    days = torch.div(unix_seconds.long(), 86400, rounding_mode="floor")
    weekday0 = (days + 3) % 7  # Monday = 0; 1970-01-01 was a Thursday
    thursday = days - weekday0 + 3  # the ISO year is the year of the week's Thursday
    year, _, _ = _civil_from_days(thursday)
    return (thursday - _days_from_jan1(year)) // 7 + 1


def clay_time_encoding(unix_seconds: torch.Tensor) -> torch.Tensor:
    """Clay ``time`` input ``(B, 4)`` = ``[sin week, cos week, sin hour, cos hour]``.

    ``week = ISO week · 2π/52``, ``hour = hour-of-day (UTC, fractional) · 2π/24``.
    """
    t = torch.as_tensor(unix_seconds)
    week = iso_week(t).double() * (2 * math.pi / 52)
    hour = torch.remainder(t.double(), 86400.0) / 3600.0 * (2 * math.pi / 24)
    return torch.stack((week.sin(), week.cos(), hour.sin(), hour.cos()), dim=-1).float()


def clay_latlon_encoding(lat_deg: torch.Tensor, lon_deg: torch.Tensor) -> torch.Tensor:
    """Clay ``latlon`` input ``(B, 4)`` = ``[sin lat, cos lat, sin lon, cos lon]`` (radians)."""
    lat = torch.deg2rad(torch.as_tensor(lat_deg).float())
    lon = torch.deg2rad(torch.as_tensor(lon_deg).float())
    return torch.stack((lat.sin(), lat.cos(), lon.sin(), lon.cos()), dim=-1)


# --------------------------------------------------------------------------- modules


class FCBlock(nn.Module):
    """``x + gelu(l2(gelu(l1(x))))`` on the wave tokens."""

    def __init__(self, size: int):
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x):
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """Generates a patch-embedding kernel and bias from wave tokens (DOFA-style)."""

    def __init__(self, patch_size: int, dim: int, latent_tokens: int = NUM_LATENT_TOKENS, mlp_dim: int = 2048):
        """Clay's sizes by default (``latent_tokens`` 128, ``mlp_dim`` 2048); smaller ones only
        for modules that are never loaded from a Clay checkpoint (the pretraining pixel head)."""
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=WAVE_DIM, nhead=4, dim_feedforward=mlp_dim, activation="gelu",
            dropout=0.0, norm_first=False, batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(WAVE_DIM, patch_size * patch_size * dim)
        self.fc_bias = nn.Linear(WAVE_DIM, dim)
        self.n_latent = latent_tokens
        self.weight_tokens = nn.Parameter(torch.randn(latent_tokens, WAVE_DIM) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, WAVE_DIM) * 0.02)

    def forward(self, waves_enc: torch.Tensor):
        """``(C, 128)`` wave tokens -> weight ``(C, p·p·D)``, bias ``(D,)``."""
        x = torch.cat([self.weight_tokens, waves_enc, self.bias_token], dim=0)  # (128+C+1, 128), unbatched
        out = self.encoder(x)
        n = self.n_latent
        weight = self.fc_weight(out[n:-1] + x[n:-1])
        bias = self.fc_bias(out[-1])
        return weight, bias


class DynamicEmbedding(nn.Module):
    """Patch embedding whose conv kernel is generated from the band wavelengths."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        self.weight_generator = WavesTransformer(patch_size, dim)
        self.fclayer = FCBlock(WAVE_DIM)
        for m in self.modules():  # Clay's init; a loaded checkpoint overwrites it
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def kernel(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves ``(C,)`` µm -> conv weight ``(D, C, p, p)`` (already ×0.02) and bias ``(D,)``."""
        p = self.patch_size
        waves_enc = self.fclayer(posemb_sincos_1d(waves, WAVE_DIM))  # (C, 128)
        weight, bias = self.weight_generator(waves_enc)  # (C, D·p·p), (D,)
        # "cin (cout k1 k2) -> cout cin k1 k2"
        weight = weight.reshape(weight.shape[0], self.dim, p, p).transpose(0, 1)
        return weight * 0.02, bias

    def forward(self, pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> tokens ``(B, (H/p)·(W/p), D)``, row-major."""
        out = F.conv2d(pixels, weight, bias, stride=self.patch_size)  # (B, D, h, w)
        return out.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x):  # (B, N, D)
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
        if n <= SHORT_SEQUENCE and x.device.type == "cpu" and not torch.is_grad_enabled():
            out = short_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # softmax(QKᵀ/√d)·V
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


#: Sequences this short (TA-2D's 9 x 9 windows give the CLS token + 1 patch token) take :func:`short_attention`
#: at inference on the CPU: with N = 2 ``scaled_dot_product_attention`` spends most of its time on per-(sample,
#: head) overhead. Training keeps SDPA, so that step03 still trains exactly the models docs/RESULTS.md measured: the
#: short path's float rounding differs in the last bits and changes a run's trajectory (seed 0: best validation
#: 1.210 K at epoch 44 instead of 1.185 K at 41). It would make a training step (batch 256) ~1.18x faster (2 cores,
#: alternating runs in one process: 185-213 against 209-254 ms).
SHORT_SEQUENCE = 4


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(QKᵀ/√d)·V`` for short sequences with broadcast products instead of batched matrix products.

    ``q, k, v (B, h, N, d)`` -> ``(B, h, N, d)``, equal to ``F.scaled_dot_product_attention`` up to float
    rounding. Measured on 2 CPU cores (B = 8192, h = 4, N = 2, d = 48): 20 ms against 68 ms per call
    (``benchmarks/bench_step04.py`` has the whole map's gain); at N = 5 it is slower than SDPA, hence
    :data:`SHORT_SEQUENCE`."""
    s = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * (q.shape[-1] ** -0.5)  # (B, h, N, N)
    return (s.softmax(-1).unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm ViT blocks: ``x += Attn(x); x += FF(x)``, final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ClayEncoder(nn.Module):
    """Clay v1.5 encoder (inference path: no masking).

    State-dict keys: ``cls_token``, ``patch_embedding.*``, ``transformer.*``.
    """

    def __init__(self, size: str = "large", patch_size: int = 8):
        super().__init__()
        if size not in CLAY_SIZES:
            raise ValueError(f"unknown Clay size {size!r}; choose one of {', '.join(CLAY_SIZES)}")
        hp = CLAY_SIZES[size]
        self.size = size
        self.patch_size = patch_size
        self.dim = hp["dim"]
        self.cls_token = nn.Parameter(torch.randn(1, 1, self.dim) * 0.02)
        self.patch_embedding = DynamicEmbedding(patch_size, self.dim)
        self.transformer = Transformer(self.dim, hp["depth"], hp["heads"], hp["dim_head"],
                                       int(self.dim * hp["mlp_ratio"]))
        self._kernel_cache: tuple | None = None

    # The generated kernel depends only on waves and the patch-embedding weights.
    # Reuse it while neither changed and no gradient has to flow into it
    # (frozen encoder, or evaluation under no_grad). ``_version`` counts in-place
    # updates (optimizer steps, load_state_dict), so a changed weight is noticed.
    def _kernel(self, waves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = list(self.patch_embedding.parameters())
        device = params[0].device
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if needs_grad:
            self._kernel_cache = None
            return self.patch_embedding.kernel(waves.to(device))
        # Pass waves as a CPU tensor to avoid a device sync here.
        key = (tuple(waves.detach().cpu().tolist()), device, tuple((p.data_ptr(), p._version) for p in params))
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                w, b = self.patch_embedding.kernel(waves.to(device))
            self._kernel_cache = (key, w, b)
        return self._kernel_cache[1], self._kernel_cache[2]

    def train(self, mode: bool = True):
        if mode:
            self._kernel_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._kernel_cache = None
        key = prefix + "cls_token"
        if key in state_dict and state_dict[key].dim() == 1:  # (D,) in some Clay versions
            state_dict[key] = state_dict[key].reshape(1, 1, -1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, pixels: torch.Tensor, time: torch.Tensor, latlon: torch.Tensor, gsd: float,
                waves: torch.Tensor) -> torch.Tensor:
        """-> tokens ``(B, 1 + L, D)``; token 0 is the CLS embedding."""
        b, c, h, w = pixels.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"pixels {h}x{w} are not a multiple of the patch size {p}")
        if waves.shape != (c,):
            raise ValueError(f"waves has shape {tuple(waves.shape)}, expected ({c},) for {c} bands")
        weight, bias = self._kernel(waves)
        patches = self.patch_embedding(pixels, weight, bias)  # (B, L, D)
        return self.encode_patches(patches, h // p, w // p, time, latlon, gsd)

    def encode_patches(self, patches: torch.Tensor, gh: int, gw: int, time: torch.Tensor, latlon: torch.Tensor,
                       gsd: float) -> torch.Tensor:
        """The encoder after the patch embedding: ``patches`` ``(B, gh·gw, D)`` (row-major) -> tokens
        ``(B, 1 + L, D)``, as :meth:`forward`."""
        b = patches.shape[0]
        pos = posemb_sincos_2d_with_gsd(gh, gw, self.dim - 8, gsd, device=patches.device)  # (L, D-8)
        meta = torch.cat((time, latlon), dim=-1).to(patches.dtype)  # (B, 8)
        enc = torch.cat((pos.to(patches.dtype).expand(b, -1, -1),
                         meta[:, None, :].expand(-1, pos.shape[0], -1)), dim=-1)  # (B, L, D)
        x = torch.cat((self.cls_token.expand(b, -1, -1).to(patches.dtype), patches + enc), dim=1)
        return self.transformer(x)


# --------------------------------------------------------------------------- loading


def _expected_keys(size: str) -> dict[str, torch.Size]:
    with torch.device("meta"):
        enc = ClayEncoder(size)
    return {k: v.shape for k, v in enc.state_dict().items()}


def _guess_size(state: dict) -> str:
    cls = state.get("cls_token")
    if cls is None:
        return "unknown (no cls_token)"
    dim = int(cls.shape[-1])
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("transformer.layers.")), default=-1)
    for name, hp in CLAY_SIZES.items():
        if hp["dim"] == dim and hp["depth"] == depth:
            return name
    return f"unknown (dim {dim}, depth {depth})"


def encoder_state_from_checkpoint(obj, where: str) -> dict:
    """Encoder tensors of a Lightning checkpoint (``state_dict`` / ``model.encoder.*``)
    or of a bare encoder state dict; other prefixes are ignored."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: not a checkpoint (a {type(obj).__name__}, expected a dict of tensors)")
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise UserError(f"{where}: 'state_dict' is a {type(sd).__name__}, expected a dict of tensors")
    prefix = "model.encoder."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    elif "cls_token" not in sd:
        some = ", ".join(list(sd)[:5]) or "none"
        raise UserError(f"{where}: no Clay encoder tensors (no 'model.encoder.*' keys and no 'cls_token'; "
                        f"first keys: {some}); point model.clay_ckpt_path at clay-v1.5.ckpt")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def load_clay_state(path: str | Path, size: str = "large") -> dict[str, torch.Tensor]:
    """Encoder state dict read from ``path`` and checked against a Clay ``size`` encoder.

    Raises :class:`UserError` naming the first offending keys and the size the
    file looks like when it does not fit.
    """
    path = Path(path)
    obj = load_torch_file(path, "Clay checkpoint", "set model.clay_ckpt_path to clay-v1.5.ckpt, or null for random init")
    sd = encoder_state_from_checkpoint(obj, str(path))
    if "cls_token" in sd and sd["cls_token"].dim() == 1:
        sd["cls_token"] = sd["cls_token"].reshape(1, 1, -1)
    want = _expected_keys(size)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(want[k])}" for k in want if k in sd and sd[k].shape != want[k]]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:4])}{more}")
        raise UserError(f"{path}: does not fit a Clay '{size}' encoder; the file looks like size "
                        f"'{_guess_size(sd)}'; " + "; ".join(parts) + " (set model.size to match the file)")
    return sd


def load_clay_encoder(path: str | Path, size: str = "large", patch_size: int = 8) -> ClayEncoder:
    """A :class:`ClayEncoder` of ``size`` with the weights at ``path`` (see :func:`load_clay_state`)."""
    enc = ClayEncoder(size, patch_size)
    enc.load_state_dict(load_clay_state(path, size), strict=True)
    return enc


def save_lightning_checkpoint(path: str | Path, state_dict: dict, step: int, hyper_parameters: dict) -> None:
    """Write ``{"state_dict": {"model.encoder.*", ...}, "step", "hyper_parameters"}``: the layout of the
    official Clay checkpoint, so :func:`load_clay_state` reads it like ``clay-v1.5.ckpt``."""
    save_torch_file(path, {"state_dict": state_dict, "step": step, "hyper_parameters": hyper_parameters})
