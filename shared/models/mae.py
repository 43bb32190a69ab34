import torch
import torch.nn.functional as F
from torch import nn

from shared.models.clay import (
    WAVE_DIM,
    ClayEncoder,
    FCBlock,
    Transformer,
    WavesTransformer,
    posemb_sincos_1d,
    posemb_sincos_2d_with_gsd,
)


def random_masking(b: int, n: int, ratio: float, generator: torch.Generator | None = None, device=None):
    """Per-sample random split of ``n`` tokens: ``(masked (B, M), visible (B, n-M))`` indices, M = int(ratio·n)."""
    n_mask = int(ratio * n)
    order = torch.rand(b, n, generator=generator).argsort(dim=1).to(device)
    return order[:, :n_mask], order[:, n_mask:]


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, C, p·p)``, tokens row-major as in the encoder."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c, p * p)


def position_metadata(h: int, w: int, dim: int, gsd: float, time: torch.Tensor, latlon: torch.Tensor):
    """Clay's token encoding ``(B, h·w, dim)``: 2-D sincos with gsd (dim-8) + time (4) + latlon (4)."""
    pos = posemb_sincos_2d_with_gsd(h, w, dim - 8, gsd, device=time.device)  # (L, dim-8)
    meta = torch.cat((time, latlon), dim=-1)  # (B, 8)
    b, n = time.shape[0], pos.shape[0]
    return torch.cat((pos.expand(b, -1, -1), meta[:, None, :].expand(-1, n, -1)), dim=-1)


def encode_visible(enc: ClayEncoder, pixels, time, latlon, gsd, waves, visible):
    """Encoder forward on the visible tokens only (Clay's masked path).

    pixels ``(B, C, H, W)``, visible ``(B, V)`` token indices -> ``(B, 1+V, D)``
    (CLS first), position encodings added before the tokens are dropped.
    """
    p = enc.patch_size
    b, _, h, w = pixels.shape
    weight, bias = enc._kernel(waves)  # conv kernel (D, C, p, p)
    # the patch embedding is a stride-p conv: embed the visible patches only (a linear map of each)
    patches = patchify(pixels, p).flatten(2)  # (B, L, C·p·p), the conv kernel's order
    patches = torch.gather(patches, 1, visible[:, :, None].expand(-1, -1, patches.shape[-1]))  # (B, V, C·p·p)
    tokens = F.linear(patches, weight.reshape(weight.shape[0], -1), bias)  # (B, V, D)
    pos = position_metadata(h // p, w // p, enc.dim, gsd, time, latlon).to(tokens.dtype)  # (B, L, D)
    tokens = tokens + torch.gather(pos, 1, visible[:, :, None].expand(-1, -1, pos.shape[-1]))
    x = torch.cat((enc.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
    return enc.transformer(x)


class PixelHead(nn.Module):
    """Dynamic-embedding pixel head: a per-band linear map ``D -> p·p`` generated from the wavelengths.

    Same parts as the encoder's patch embedding (``fclayer``, ``weight_generator``);
    the generated bias (width D) is added to the features before the map. The
    generator is smaller than the encoder's (16 latent tokens, MLP 512 instead of
    128 / 2048): it is never loaded from or into a Clay checkpoint's encoder, and
    at Clay's size the two generators took a third of a tiny-model step.
    """

    def __init__(self, patch_size: int, dim: int, latent_tokens: int = 16, mlp_dim: int = 512):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        self.weight_generator = WavesTransformer(patch_size, dim, latent_tokens, mlp_dim)
        self.fclayer = FCBlock(WAVE_DIM)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        """tokens ``(B, L, D)`` -> pixels ``(B, L, C, p·p)``."""
        weight, bias = self.weight_generator(self.fclayer(posemb_sincos_1d(waves.to(x.device), WAVE_DIM)))
        c = weight.shape[0]
        weight = weight.reshape(c * self.patch_size**2, self.dim) * 0.02  # (C·p·p, D)
        out = F.linear(x + bias, weight)  # (B, L, C·p·p)
        return out.reshape(*x.shape[:2], c, self.patch_size**2)


class MAEDecoder(nn.Module):
    """Clay's decoder layout: ``enc_to_dec``, ``mask_patch``, ``transformer``, ``embed_to_pixels``."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: float,
                 patch_size: int = 8):
        super().__init__()
        self.dim = dim
        self.enc_to_dec = nn.Linear(encoder_dim, dim) if encoder_dim != dim else nn.Identity()
        self.mask_patch = nn.Parameter(torch.randn(dim) * 0.02)
        self.transformer = Transformer(dim, depth, heads, dim_head, int(dim * mlp_ratio))
        self.embed_to_pixels = PixelHead(patch_size, dim)

    def forward(self, encoded, visible, masked, grid: tuple[int, int], gsd, time, latlon, waves):
        """encoded ``(B, 1+V, De)`` -> pixels of every token ``(B, L, C, p·p)``."""
        x = self.enc_to_dec(encoded)
        cls, vis = x[:, :1], x[:, 1:]
        b, n = x.shape[0], grid[0] * grid[1]
        enc = position_metadata(grid[0], grid[1], self.dim, gsd, time, latlon).to(x.dtype)  # (B, L, d)
        full = self.mask_patch.to(x.dtype).expand(b, n, -1).clone()
        full = full.scatter(1, visible[:, :, None].expand(-1, -1, self.dim), vis)
        full = full + enc
        y = self.transformer(torch.cat((cls, full), dim=1))[:, 1:]
        return self.embed_to_pixels(y, waves)


class ClayMAE(nn.Module):
    """Encoder + decoder; ``state_dict`` keys ``encoder.*`` / ``decoder.*``."""

    def __init__(self, size: str = "tiny", decoder_dim: int = 128, decoder_depth: int = 1, decoder_heads: int = 4,
                 decoder_dim_head: int = 32, decoder_mlp_ratio: float = 2.0, mask_ratio: float = 0.75,
                 loss: str = "l1"):
        super().__init__()
        self.encoder = ClayEncoder(size)
        self.decoder = MAEDecoder(self.encoder.dim, decoder_dim, decoder_depth, decoder_heads, decoder_dim_head,
                                  decoder_mlp_ratio, self.encoder.patch_size)
        self.mask_ratio, self.loss_kind = mask_ratio, loss

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, C, p·p)``, tokens row-major as in the encoder."""
        return patchify(pixels, self.encoder.patch_size)

    def forward(self, pixels, time, latlon, gsd, waves, generator=None):
        """-> ``(loss, recon (B, L, C, p·p), masked (B, M))``; loss over masked patches only."""
        p = self.encoder.patch_size
        b, _, h, w = pixels.shape
        grid = (h // p, w // p)
        masked, visible = random_masking(b, grid[0] * grid[1], self.mask_ratio, generator, pixels.device)
        encoded = encode_visible(self.encoder, pixels, time, latlon, gsd, waves, visible)
        recon = self.decoder(encoded, visible, masked, grid, gsd, time, latlon, waves)
        target = self.patchify(pixels)
        idx = masked[:, :, None, None].expand(-1, -1, *target.shape[2:])
        diff = torch.gather(recon, 1, idx) - torch.gather(target, 1, idx)
        loss = diff.abs().mean() if self.loss_kind == "l1" else diff.pow(2).mean()
        return loss, recon, masked


def lightning_state(model: ClayMAE) -> dict:
    """``{"model.encoder.*", "model.decoder.*"}`` tensors, as in the official checkpoint."""
    return {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}

