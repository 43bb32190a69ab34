"""The TA regression model: Clay encoder on the patch + a small MLP head.

::

    x (B,19,P,P) ─ encoder channels ─ bilinear resize to R×R ─ ClayEncoder ─ CLS (B,D) ─ LayerNorm ─┐
    time7 (B,7), location: loc -> normalised lat/lon (B,2) and/or site (B,7), landcover_onehot (B,17), ├─ MLP ─ TA z-score (B,)
    SZA/DEM/LSMASK centre value + patch mean + patch std (B,9)  ── "aux" (B,35..42) ───────────────┤
    [head_spectral] 16 radiances: centre value + patch mean (B,32)  ── also "aux" (B,67..74) ──────┘

``location`` says how the model knows where a pixel is: ``latlon`` (the head
gets the normalised lat/lon, the encoder Clay's lat/lon encoding),
``site`` (the head gets the site descriptors of :mod:`shared.features.site`,
the batch key ``site``; the encoder gets the lat/lon of the training mean
location for every sample, so lat/lon reach the model nowhere) or ``both``.

``uncertainty: gaussian`` adds a small head on the same (detached) inputs that
predicts the log-variance of the z-score error, trained with the Gaussian
likelihood with the mean held fixed (:func:`gaussian_nll`): the mean is
trained exactly as without it; step03 calibrates its scale on the validation
rows (``uncertainty`` in the checkpoint).

``lapse_rate_K_per_km`` (default 6.5, the standard atmosphere) builds the
temperature decrease with height into the output: the head predicts the TA
the pixel would have at the stations' mean height, and the model subtracts
``lapse_rate x (DEM of the centre pixel - that height)``. Stations stand mostly
below 300 m; without this prior the head learns the height dependence only
over their range and maps the mountains several kelvin too warm (measured on
the demo world: +5 K above 1000 m). The head still learns departures from the
standard rate (night inversions, cold pools) from the DEM inputs. ``lapse_scale``
(data) converts: TA z-score per DEM z-score per K/km = DEM std (km) / TA std (K).
The height is the batch's ``height`` where it has one (a station row of a
patch chunk: the station's own elevation, which is mostly below its pixel's
mean height) and the centre pixel's DEM otherwise (a map pixel). So the head
learns the TA of the pixel, not of the low spot where its station stands.

``clamp_inputs`` (default true) clamps every input of the mean head to the
range it took over the training rows (``input_lo``/``input_hi``, set by step03
once training ends; :meth:`TAModel.set_input_range`). An MLP extrapolates
linearly and without bound; a pixel unlike every station (the open sea: land
fraction 0, negative coast distance; peaks above the highest station) would
get whatever the linear pieces add up to. Clamped, it gets the value of the
nearest edge of what the model learnt, as a tree model would. The lapse term
keeps the raw height.

``extrapolation_variance`` (default true; it acts only with ``clamp_inputs``)
says how sure the model is of such a pixel. The variance head sees the clamped
inputs too, and the variance adds the square of (unclamped mean - clamped mean):
how much the answer depends on how the model would extrapolate. The term is 0
inside the training range (so on nearly every validation row, and the
calibration barely moves) and grows with the distance beyond it and with how
steeply the model's mean changes there. The validation calibration
(``sigma_scale``) scales the sum, as it scales the head alone. Measured on the demo world: the raw
variance head, which has only seen training rows, gave the open sea a standard
error 2-3 times its error (the 90 % interval covered 99.5 % of the true field)
and land beyond 200 km of a station too little (64 %); with the term the 90 %
interval covers 88-94 % over the sea and 85 % there (12 maps). Without it
(false), the variance head sees the raw inputs.

``pool: mean`` gives the head the mean of the patch tokens instead of the CLS
token. ``encoder_channels: all`` also feeds SZA/DEM/LSMASK to the encoder, with
the pseudo-wavelengths ``pseudo_waves_um``. ``head_spectral`` gives the head
a direct path to the radiances: an encoder trained from scratch on a few
thousand samples extracts them poorly (measured on the demo world).

The model is described by one plain dict (``model_cfg``) stored in every
checkpoint, so :func:`load_ta_checkpoint` rebuilds it with nothing else.
For cached frozen-encoder features, :meth:`TAModel.encode` gives the CLS
features and :meth:`TAModel.aux_features` the rest; :meth:`TAModel.forward`
uses ``batch["features"]`` / ``batch["aux"]`` when present.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from shared.core.errors import UserError
from shared.io.channels import (
    AUX_CHANNELS,
    BT_CHANNELS,
    BT_WAVES_UM,
    GSD_M,
    N_LANDCOVER,
    PATCH_CHANNELS,
    RF_CHANNELS,
    RF_WAVES_UM,
    SITE_FEATURES,
)
from shared.models.clay import CLAY_SIZES, ClayEncoder, clay_latlon_encoding, clay_time_encoding

N_TIME7 = 7
LOCATIONS = ("latlon", "site", "both")
MODEL_TYPE = "clay_transfer"

#: Wavelengths given to the non-spectral inputs when they go through the encoder
#: (encoder_channels: all); beyond every real band so none is mistaken for one.
PSEUDO_WAVES_UM = [20.0, 25.0, 30.0]


@dataclass
class TAModelConfig:
    """Everything that builds a :class:`TAModel`: the single source of the model's defaults.

    step03's ``model:`` config section takes its defaults from here; the data
    fields (``patch_size``, ``channels``, ``gsd_m``, ``loc_*``, ``site_features``) come from the
    patch chunks. Stored in every checkpoint as a plain dict (:meth:`to_dict`).
    """

    type: str = MODEL_TYPE
    size: str = "tiny"
    clay_patch_size: int = 8
    patch_size: int = 9
    resize_to: int = 8
    channels: list[str] = field(default_factory=lambda: list(PATCH_CHANNELS))
    encoder_channels: str = "spectral"
    bt_waves_um: list[float] = field(default_factory=lambda: list(BT_WAVES_UM))
    rf_waves_um: list[float] = field(default_factory=lambda: list(RF_WAVES_UM))
    pseudo_waves_um: list[float] = field(default_factory=lambda: list(PSEUDO_WAVES_UM))
    gsd_m: float = GSD_M
    loc_mean: list[float] = field(default_factory=lambda: [36.0, 127.5])
    loc_std: list[float] = field(default_factory=lambda: [1.5, 1.5])
    head_hidden: int = 256
    head_layers: int = 2
    dropout: float = 0.0
    freeze_encoder: bool = False
    head_spectral: bool = True
    pool: str = "cls"
    uncertainty: str = "gaussian"
    location: str = "both"  # latlon | site | both (see the module docstring)
    site_features: list[str] = field(default_factory=lambda: list(SITE_FEATURES))
    lapse_rate_K_per_km: float = 6.5  # built-in decrease of TA with height (0 = none), see the module docstring
    lapse_scale: float = 0.0  # data: DEM channel std (km) / TA std (K); 0 = no lapse term
    members: int = 1  # > 1: a deep ensemble of that many models of this config (:class:`TAEnsemble`)
    clamp_inputs: bool = True  # the mean head sees its inputs clamped to the training rows' range (module docstring)
    extrapolation_variance: bool = True  # with clamp_inputs: variance from the clamped inputs + the clamp's effect

    #: Keys added after the first checkpoints were written, with the value that rebuilds those.
    ADDED_LATER = {"head_spectral": False, "pool": "cls", "uncertainty": "none", "location": "latlon", "site_features": [],
                   "lapse_rate_K_per_km": 0.0, "lapse_scale": 0.0, "members": 1,
                   "clamp_inputs": False, "extrapolation_variance": False}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "checkpoint") -> TAModelConfig:
        """From a stored dict; keys added later get the value that rebuilds older checkpoints."""
        if not isinstance(d, dict) or d.get("type") != MODEL_TYPE:
            kind = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise UserError(f"{where}: model type {kind!r} is not supported here (expected {MODEL_TYPE!r})")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{where}: model config has keys this version does not know: {', '.join(unknown)}")
        missing = sorted(names - set(d) - set(cls.ADDED_LATER))
        if missing:
            raise UserError(f"{where}: model config lacks {', '.join(missing)}")
        return cls(**{**cls.ADDED_LATER, **d})


#: Under inference_mode, the patch embedding of a one-token window as one matrix product (:meth:`TAModel.encode`);
#: ``benchmarks/bench_step04.py --embedding conv`` switches it off to compare.
FOLD_PATCH_EMBEDDING = True


class TAModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        if cfg["size"] not in CLAY_SIZES:
            raise UserError(f"model.size must be one of {', '.join(CLAY_SIZES)}, got {cfg['size']!r}")
        if cfg["resize_to"] % cfg["clay_patch_size"]:
            raise UserError(f"model.resize_to ({cfg['resize_to']}) must be a multiple of the Clay patch size "
                            f"({cfg['clay_patch_size']})")
        if len(cfg["bt_waves_um"]) != len(BT_CHANNELS) or len(cfg["rf_waves_um"]) != len(RF_CHANNELS):
            raise UserError(f"model.bt_waves_um needs {len(BT_CHANNELS)} values and model.rf_waves_um "
                            f"{len(RF_CHANNELS)} (GK-2A channel order)")
        waves = dict(zip(BT_CHANNELS, cfg["bt_waves_um"])) | dict(zip(RF_CHANNELS, cfg["rf_waves_um"]))
        if cfg["encoder_channels"] == "all":
            waves |= dict(zip(AUX_CHANNELS, cfg["pseudo_waves_um"]))
        elif cfg["encoder_channels"] != "spectral":
            raise UserError(f"model.encoder_channels must be 'spectral' or 'all', got {cfg['encoder_channels']!r}")
        self.pool = cfg.get("pool", "cls")
        if self.pool not in ("cls", "mean"):
            raise UserError(f"model.pool must be 'cls' or 'mean', got {self.pool!r}")
        self.location = cfg.get("location", "latlon")
        if self.location not in LOCATIONS:
            raise UserError(f"model.location must be one of {', '.join(LOCATIONS)}, got {self.location!r}")
        self.use_latlon = self.location in ("latlon", "both")
        self.n_site = len(cfg.get("site_features") or []) if self.location in ("site", "both") else 0
        if self.location != "latlon" and self.n_site == 0:
            raise UserError(f"model.location {self.location!r} needs site features, but the model config lists none")
        chans = cfg["channels"]
        # Derived from cfg, so not saved in the state dict.
        self.register_buffer("enc_idx", torch.tensor([chans.index(n) for n in waves]), persistent=False)
        # Kept on the CPU: the encoder keys its cached patch kernel on these values.
        self.waves = torch.tensor(list(waves.values()), dtype=torch.float32)
        self.register_buffer("aux_idx", torch.tensor([chans.index(n) for n in AUX_CHANNELS]), persistent=False)
        self.head_spectral = bool(cfg.get("head_spectral", False))
        self.register_buffer("spec_idx", torch.tensor([chans.index(n) for n in BT_CHANNELS + RF_CHANNELS]),
                             persistent=False)
        self.register_buffer("loc_mean", torch.tensor(cfg["loc_mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("loc_std", torch.tensor(cfg["loc_std"], dtype=torch.float32), persistent=False)
        # Clay sees R×R pixels covering the P×P window: gsd of a resized pixel.
        self.enc_gsd = float(cfg["gsd_m"]) * cfg["patch_size"] / cfg["resize_to"]

        self.encoder = ClayEncoder(cfg["size"], cfg["clay_patch_size"])
        d = self.encoder.dim
        self.n_aux = N_TIME7 + 2 * self.use_latlon + self.n_site + N_LANDCOVER + 3 * len(AUX_CHANNELS)
        # the TA z-score change per unit of the (z-scored) DEM channel, and the DEM centre value's column in aux
        self.lapse_z = -float(cfg.get("lapse_rate_K_per_km", 0.0)) * float(cfg.get("lapse_scale", 0.0))
        self.dem_aux_col = N_TIME7 + 2 * self.use_latlon + self.n_site + N_LANDCOVER + AUX_CHANNELS.index("DEM")
        if self.head_spectral:
            self.n_aux += 2 * len(self.spec_idx)
        layers: list[nn.Module] = []
        width = d + self.n_aux
        for _ in range(cfg["head_layers"]):
            layers += [nn.Linear(width, cfg["head_hidden"]), nn.GELU(), nn.Dropout(cfg["dropout"])]
            width = cfg["head_hidden"]
        layers.append(nn.Linear(width, 1))
        self.feat_norm = nn.LayerNorm(d)  # pretrained CLS features can be far from unit scale
        self.mlp = nn.Sequential(*layers)
        self.uncertainty = cfg.get("uncertainty", "none")
        if self.uncertainty not in ("none", "gaussian"):
            raise UserError(f"model.uncertainty must be 'gaussian' or 'none', got {self.uncertainty!r}")
        # log-variance of the TA z-score from the head's (detached) inputs: it learns how large the error of the
        # mean is, without changing the mean (see :func:`gaussian_nll`)
        self.logvar_mlp = (nn.Sequential(nn.Linear(d + self.n_aux, 64), nn.GELU(), nn.Linear(64, 1))
                           if self.uncertainty == "gaussian" else None)
        # the range of the head's inputs over the training rows (set once training ends, see set_input_range);
        # +-inf until then, so the clamp changes nothing while the model learns
        self.clamp_inputs = bool(cfg.get("clamp_inputs", False))
        if self.clamp_inputs:
            self.register_buffer("input_lo", torch.full((d + self.n_aux,), -math.inf))
            self.register_buffer("input_hi", torch.full((d + self.n_aux,), math.inf))
        self.extrapolation_variance = self.clamp_inputs and bool(cfg.get("extrapolation_variance", False))
        self.freeze_encoder = bool(cfg["freeze_encoder"])
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # fixed weights: keep the generated patch kernel cached
        return self

    @property
    def feature_dim(self) -> int:
        return self.encoder.dim

    def encode(self, batch: dict) -> torch.Tensor:
        """Encoder embedding ``(B, D)`` of the patches in ``batch``: the CLS token, or the mean patch token.

        Under ``torch.inference_mode`` (step04's maps, step05's predictions) with one Clay token per window
        (``resize_to`` = the Clay patch size, the default), the encoder channels' selection, the bilinear resize
        and the patch convolution are one linear map of the window, applied as one matrix product
        (:meth:`folded_patch_kernel`): the same tokens to float rounding, ~1.3 times the windows per second on a
        CPU (``benchmarks/bench_step04.py --embedding folded conv``). Training and its validation (autograd or ``no_grad``) take the
        resize and the convolution as written."""
        x = batch["x"]
        r = self.cfg["resize_to"]
        loc = batch["loc"]
        if not self.use_latlon:  # the same place for every sample: no lat/lon through the encoder either
            loc = self.loc_mean.expand(loc.shape[0], 2)
        time = clay_time_encoding(batch["time_unix"]).to(x.device)
        latlon = clay_latlon_encoding(loc[:, 0], loc[:, 1])
        if FOLD_PATCH_EMBEDDING and torch.is_inference_mode_enabled() and r == self.encoder.patch_size:
            weight, bias = self.folded_patch_kernel(x.shape[-1])
            patches = torch.addmm(bias.to(x.dtype), x.reshape(x.shape[0], -1), weight.to(x.dtype).t())
            tokens = self.encoder.encode_patches(patches[:, None], 1, 1, time, latlon, self.enc_gsd)
        else:
            x = x.index_select(1, self.enc_idx)  # (B, C_enc, P, P)
            if x.shape[-1] != r or x.shape[-2] != r:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
            tokens = self.encoder(x, time, latlon, self.enc_gsd, self.waves)  # (B, 1+L, D)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)

    def folded_patch_kernel(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embedding of a P x P window of all input channels as one linear map: weight
        ``(D, C·P·P)`` and bias ``(D,)``, with ``token = weight @ x.flatten() + bias`` equal (to float rounding)
        to selecting the encoder channels, resizing them bilinearly to R x R (R = the Clay patch size) and
        applying the generated R x R patch kernel. Other channels have zero weight."""
        r = self.cfg["resize_to"]
        w, b = self.encoder._kernel(self.waves)  # (D, C_enc, R, R), (D,)
        with torch.autocast(w.device.type, enabled=False):  # the map itself in full precision (bf16 applies it)
            w = w.float()
            eye = torch.eye(p * p, dtype=w.dtype, device=w.device).reshape(p * p, 1, p, p)
            resize = eye if p == r else F.interpolate(eye, size=(r, r), mode="bilinear", align_corners=False)
            folded = w.reshape(w.shape[0], w.shape[1], r * r) @ resize.reshape(p * p, r * r).t()  # (D, C_enc, P·P)
            full = w.new_zeros(w.shape[0], len(self.cfg["channels"]), p * p)
            full[:, self.enc_idx] = folded
        return full.reshape(w.shape[0], -1), b

    def aux_features(self, batch: dict) -> torch.Tensor:
        """Non-encoder inputs of the head ``(B, n_aux)``."""
        x = batch["x"].index_select(1, self.aux_idx)  # (B, 3, P, P)
        c = x.shape[-1] // 2
        parts = [batch["time7"]]
        if self.use_latlon:
            parts.append((batch["loc"][:, :2] - self.loc_mean) / self.loc_std)
        if self.n_site:
            site = batch["site"]
            if site.shape[1] != self.n_site:
                raise UserError(f"batch 'site' has {site.shape[1]} features, the model takes {self.n_site} "
                                f"({', '.join(self.cfg['site_features'])})")
            parts.append(site.to(x.dtype))
        parts += [batch["landcover_onehot"], x[:, :, c, c], x.mean((2, 3)), x.std((2, 3))]
        if self.head_spectral:  # a direct path for the radiances beside the encoder
            spec = batch["x"].index_select(1, self.spec_idx)  # (B, 16, P, P)
            parts += [spec[:, :, c, c], spec.mean((2, 3))]
        return torch.cat(parts, dim=1)

    def head_input(self, features: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """The head's input ``(B, D + n_aux)``: the normalised encoder features, then the aux inputs."""
        return torch.cat([self.feat_norm(features), aux.to(features.dtype)], dim=1)

    @torch.no_grad()
    def set_input_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set the range the mean head clamps its inputs to (per column of :meth:`head_input`)."""
        if not self.clamp_inputs:
            raise ValueError("set_input_range: this model was built with clamp_inputs false")
        lo, hi = lo.detach().float().reshape(-1), hi.detach().float().reshape(-1)
        if lo.shape != self.input_lo.shape or hi.shape != self.input_hi.shape:
            raise ValueError(f"set_input_range: {tuple(lo.shape)} / {tuple(hi.shape)} values for "
                             f"{self.input_lo.numel()} head inputs")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo <= hi).all()):
            raise ValueError("set_input_range: the range must be finite with lo <= hi")
        self.input_lo.copy_(lo)
        self.input_hi.copy_(hi)

    def head(self, features: torch.Tensor, batch: dict, with_logvar: bool = False):
        """TA z-score ``(B,)`` from encoder features ``(B, D)`` and the batch's other inputs;
        ``with_logvar``: also its log-variance ``(B,)`` (zeros without an uncertainty head)."""
        aux = batch["aux"] if "aux" in batch else self.aux_features(batch)
        h = self.head_input(features, aux)
        # the mean head never sees a value beyond what it was fitted on (an MLP extrapolates linearly, without
        # bound)
        hm = torch.clamp(h, self.input_lo.to(h.dtype), self.input_hi.to(h.dtype)) if self.clamp_inputs else h
        head_mean = self.mlp(hm).squeeze(1)
        mean = head_mean
        if self.lapse_z:  # at the station's own height where the batch has one, else the pixel's DEM
            z = batch["height"] if "height" in batch else aux[:, self.dem_aux_col]
            mean = mean + self.lapse_z * z.to(mean.dtype)
        if not with_logvar:
            return mean
        if self.logvar_mlp is None:
            return mean, torch.zeros_like(mean)
        # the variance head on the clamped inputs (extrapolation_variance) or the raw ones
        logvar = self.logvar_mlp((hm if self.extrapolation_variance else h).detach()).squeeze(1).clamp(-12.0, 8.0)
        if self.extrapolation_variance and not self.training:
            # + (unclamped - clamped mean)^2; in training the range is +-inf (and dropout differs)
            ext = (self.mlp(h.detach()).squeeze(1) - head_mean.detach()).float()
            logvar = torch.log(logvar.float().exp() + ext.pow(2)).clamp(-12.0, 8.0).to(mean.dtype)
        return mean, logvar

    @property
    def has_variance(self) -> bool:
        """Whether ``forward(..., with_logvar=True)`` predicts a per-row variance (a variance head)."""
        return self.logvar_mlp is not None

    def forward(self, batch: dict, with_logvar: bool = False):
        """TA z-score ``(B,)``; ``with_logvar=True``: ``(mean, log-variance)`` (uncalibrated: the checkpoint's
        ``uncertainty.sigma_scale`` scales the standard deviation, see :mod:`shared.models.checkpoint`)."""
        feats = batch["features"] if "features" in batch else self.encode(batch)
        return self.head(feats, batch, with_logvar)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of ``y`` (constant dropped) with the mean held fixed (detached): the
    variance head learns the squared error of the mean; the mean is trained by the MSE alone."""
    err2 = (y - mean.detach()).pow(2)
    return 0.5 * (logvar + err2 * torch.exp(-logvar)).mean()


class TAEnsemble(nn.Module):
    """A deep ensemble: ``members`` TA models of one config, trained apart from different seeds.

    The output is the members' mean; its variance is the mixture's: the mean of the members' own error
    variances (each member's variance head scaled by its own validation calibration, ``member_sd``; a member
    without a head contributes its validation MSE) plus the variance of the members' means. Members disagree most
    where the data taught them least (far from the stations, over the sea), so the spread is the part of the
    standard error that grows there. The ensemble is calibrated on the validation rows like one model
    (``uncertainty.sigma_scale`` of its checkpoint)."""

    has_variance = True

    def __init__(self, cfg: dict):
        super().__init__()
        k = int(cfg["members"])
        self.members = nn.ModuleList(TAModel({**cfg, "members": 1}) for _ in range(k))
        # each member's calibrated standard-deviation scale (z-score units); set when the ensemble is assembled
        self.register_buffer("member_sd", torch.ones(k))

    def forward(self, batch: dict, with_logvar: bool = False):
        """TA z-score ``(B,)``; ``with_logvar=True``: ``(mean, log of the mixture variance)``."""
        if not with_logvar:
            return torch.stack([m(batch) for m in self.members]).mean(0)
        outs = [m(batch, with_logvar=True) for m in self.members]
        mu = torch.stack([o[0] for o in outs]).float()  # (K, B)
        var = torch.stack([o[1] for o in outs]).float().exp() * self.member_sd.float()[:, None].pow(2)
        total = var.mean(0) + mu.var(0, unbiased=False)
        return mu.mean(0), total.clamp_min(1e-12).log()


def build_model(model_cfg: TAModelConfig | dict, where: str = "checkpoint") -> TAModel | TAEnsemble:
    """A :class:`TAModel` (or, with ``members`` > 1, a :class:`TAEnsemble`) from its config (or the dict stored in
    a checkpoint)."""
    if isinstance(model_cfg, dict):
        model_cfg = TAModelConfig.from_dict(model_cfg, where)
    if model_cfg.members < 1:
        raise UserError(f"{where}: model members must be >= 1, got {model_cfg.members}")
    if model_cfg.members > 1:
        return TAEnsemble(model_cfg.to_dict())
    return TAModel(model_cfg.to_dict())
