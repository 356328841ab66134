"""AR-VAE (paper Sec. 3.1): a per-frame TiTok-style encoder and a temporally causal decoder.

Encoder, per frame: patches + L learned latent tokens through a ViT; only the latent outputs are kept,
projected to D channels (continuous, no quantiser) and normalised to unit length. With `local_latents`
(the `default` preset) each latent token codes one image region and a linear path per region runs beside the
transformer (see `VAEConfig`).

Decoder, per frame i: P learned patch placeholders + frame i's L latent tokens. In every block
  - latent tokens attend to frame i's latent tokens only, so their states are a function of z_i alone
    (a frame's states can be computed once and cached: incremental decoding is exact and cheap);
  - patch tokens attend to frame i's patch and latent tokens (the "spatial" attention) and, through a
    separate gated cross-attention (the "temporal" path), to the latent tokens of the previous
    temporal_window - 1 frames. Nothing of a later frame reaches frame i.

The temporal path has its own query/key/value/output projections, a learned key per frame offset (so a
patch knows how far back a latent lies) and a per-channel gate initialised at zero. Frame 0 and single
frames never use it, so a per-frame image stage trains everything else (`encoder_parameters()`,
`decoder_parameters()`); the `vae-temporal` stage then trains `temporal_parameters()`, and with the gate
at zero the model starts from exactly the image model.

Batch `decode` and incremental `decode_next` run the same block code: a block receives the frames to
decode plus the temporal memory (key/value projections of latent tokens) of up to W - 1 earlier frames,
which is empty for `decode` and the cached frames for `decode_next`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.layers import Mlp, PatchEmbed, approx_gelu, build_sincos2d_pos_embed
from engine.models.presets import VAEConfig


class Attention(nn.Module):
    """Multi-head self-attention with an optional boolean mask (True = may attend)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm ViT block (encoder)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=approx_gelu)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TemporalAttention(nn.Module):
    """Gated cross-attention: patch tokens read the latent tokens of up to `max_offset` earlier frames.

    `memory(h_latent)` is what a frame leaves for later frames (keys/values of its latent tokens, without
    any offset information, so it can be cached once). At read time the key gets a learned vector for
    how many frames back it lies; this keeps the path translation-invariant in time.
    """

    def __init__(self, dim: int, heads: int, max_offset: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.offset_key = nn.Parameter(torch.zeros(max_offset, dim))  # row k: a latent k + 1 frames back
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(dim))  # zero: the path starts switched off (module docstring)

    def memory(self, h_latent: torch.Tensor) -> torch.Tensor:
        """[..., L, C] normed latent states -> [..., L, 2C] keys and values."""
        return self.kv(h_latent)

    def forward(
        self, h_patch: torch.Tensor, window: torch.Tensor, valid: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """h_patch [B', P, C]; window [B', S, L, 2C], slot s lying S - s frames back; valid [B', S] or None.

        Every row of `valid` must have a True entry (a frame with no history is not passed in at all).
        """
        Bq, P, C = h_patch.shape
        S, L = window.shape[1], window.shape[2]
        k, v = window.chunk(2, dim=-1)
        offsets = self.offset_key[:S].flip(0).to(k.dtype)  # slot s -> offset_key[S - 1 - s]
        k = (k + offsets[None, :, None, :]).reshape(Bq, S * L, C)
        v = v.reshape(Bq, S * L, C)
        d = C // self.heads
        q = self.q(h_patch).view(Bq, P, self.heads, d).transpose(1, 2)
        k = k.view(Bq, S * L, self.heads, d).transpose(1, 2)
        v = v.view(Bq, S * L, self.heads, d).transpose(1, 2)
        mask = None if valid is None else valid.repeat_interleave(L, dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.gate * self.proj(out.transpose(1, 2).reshape(Bq, P, C))


class DecoderBlock(nn.Module):
    """Pre-norm block over frames of [P patch tokens, L latent tokens] with the temporal path for patches."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, num_patches: int, temporal_window: int
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.temporal_window = temporal_window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.temporal = TemporalAttention(dim, heads, temporal_window - 1) if temporal_window > 1 else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=approx_gelu)

    def forward(
        self, x: torch.Tensor, spatial_mask: torch.Tensor, past: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, N, P + L, C]: N consecutive frames; past [B, M, L, 2C]: memory of the M frames before them.

        Returns the new x and this layer's memory of the N frames ([B, N, L, 2C]; None with no temporal path).
        """
        B, N, T, C = x.shape
        P = self.num_patches
        h = self.norm1(x)
        a = self.attn(h.reshape(B * N, T, C), spatial_mask).view(B, N, T, C)
        mem = None
        if self.temporal is not None:
            mem = self.temporal.memory(h[:, :, P:])
            seq = mem if past is None else torch.cat([past, mem], dim=1)  # frame n sits at seq index M + n
            M = seq.shape[1] - N
            S = min(self.temporal_window - 1, M + N - 1)  # slots per window: at most W - 1 earlier frames
            first = 0 if M > 0 else 1  # a frame with nothing before it has no temporal term
            if S > 0 and first < N:
                # Query frame n reads seq indices M + n - S .. M + n - 1 (strictly earlier frames only);
                # negative indices are padding, clamped for the gather and masked out of the attention.
                query_pos = M + torch.arange(first, N, device=x.device)
                idx = query_pos[:, None] - S + torch.arange(S, device=x.device)  # [Nq, S]
                window = seq[:, idx.clamp(min=0)]  # [B, Nq, S, L, 2C]
                Nq = N - first
                padded = M + first - S < 0  # the smallest index, known without reading idx
                valid = (idx >= 0).expand(B, Nq, S).reshape(B * Nq, S) if padded else None
                t = self.temporal(h[:, first:, :P].reshape(B * Nq, P, C), window.flatten(0, 1), valid)
                # Zero for frame 0 (if it has no past) and for latent tokens; adding 0 leaves them exact.
                a = a + F.pad(t.view(B, Nq, P, C), (0, 0, 0, T - P, first, 0))
        return self._finish(x, a), mem

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = x + a
        return x + self.mlp(self.norm2(x))

    def step(
        self, x: torch.Tensor, spatial_mask: torch.Tensor, memory: torch.Tensor, mem_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame with a fixed-size memory, for export: x [B, 1, P + L, C]; memory [B, S, L, 2C], slot s lying
        S - s frames back, of which the last `mem_len` (int64 [1], 0..S) are real frames.

        Equals `forward` with the real frames as `past`. Returns the new x and the frame's memory [B, 1, L, 2C]
        (the input memory back when this layer has no temporal path).
        """
        B, _, T, C = x.shape
        P = self.num_patches
        h = self.norm1(x)
        a = self.attn(h.reshape(B, T, C), spatial_mask).view(B, 1, T, C)
        if self.temporal is None:
            return self._finish(x, a), memory[:, -1:]
        mem = self.temporal.memory(h[:, :, P:])
        S = memory.shape[1]
        has_past = mem_len > 0
        # With no past every slot is "valid" (avoids an all-masked softmax) and the term is multiplied by 0.
        valid = (torch.arange(S, device=x.device) >= S - mem_len) | ~has_past
        t = self.temporal(h[:, 0, :P], memory.to(h.dtype), valid[None].expand(B, S)) * has_past.to(h.dtype)
        a = a + F.pad(t[:, None], (0, 0, 0, T - P))
        return self._finish(x, a), mem


class BorderMixer(nn.Module):
    """A residual convolution over decoded frames (VAEConfig.mixer_channels): three 3x3 layers, so each pixel
    reads 3 pixels either side, enough to meet its neighbouring region across a border. The last layer starts at
    zero (`ARVAE.initialize_weights`): the mixer starts as the identity, and a decoder fine-tune can add it to a
    trained VAE without changing a single frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, channels, 3), nn.GELU(), nn.Conv2d(channels, channels, 3), nn.GELU(),
                                 nn.Conv2d(channels, 3, 3))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [..., 3, H, W] -> the same, mixed."""
        x = frames.reshape(-1, *frames.shape[-3:])
        for layer in self.net:
            x = layer(_pad_edges(x) if isinstance(layer, nn.Conv2d) else x)
        return frames + x.view(frames.shape)


def _pad_edges(x: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H + 2, W + 2], the edge pixels repeated (a frame's edge is no border to smooth):
    `padding_mode="replicate"` written as concatenations, which AOTInductor also compiles with a dynamic batch."""
    x = torch.cat([x[..., :, :1], x, x[..., :, -1:]], dim=-1)
    return torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)


@dataclass
class DecodeState:
    """Incremental decoding state: per decoder layer, the temporal memory of the last W - 1 frames."""

    batch_size: Optional[int] = None
    device: Optional[torch.device] = None
    dtype: Optional[torch.dtype] = None
    num_frames: int = 0  # frames decoded so far
    memory: list[Optional[torch.Tensor]] = field(default_factory=list)  # per layer: [B, <= W - 1, L, 2C]


class ARVAE(nn.Module):
    """Auto-regressive video auto-encoder: frames [B, N, 3, H, W] in [-1, 1] <-> latents [B, N, L, D]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, P, L = cfg.width, cfg.num_patches, cfg.num_latent_tokens
        # Encoder
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, 3, C)
        self.enc_pos_embed = nn.Parameter(torch.zeros(1, P, C))
        self.latent_tokens = nn.Parameter(torch.zeros(1, L, C))
        self.encoder_blocks = nn.ModuleList(
            [Block(C, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)]
        )
        self.enc_norm = nn.LayerNorm(C)
        self.to_latent = nn.Linear(C, cfg.latent_dim)
        region = cfg.image_size // math.isqrt(L) if cfg.local_latents else 0
        # Local latents: the linear path per region (config docstring); a conv with stride = kernel = region.
        self.region_in = nn.Conv2d(3, cfg.latent_dim, region, stride=region) if region else None
        # Set by the trainer to 1 / std of the latents over data so diffusion sees unit variance.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        # Decoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, C))  # one placeholder shared by patches and frames
        self.dec_pos_embed = nn.Parameter(torch.zeros(1, P, C))
        self.from_latent = nn.Linear(cfg.latent_dim, C)
        self.latent_slot_embed = nn.Parameter(torch.zeros(1, L, C))
        self.decoder_blocks = nn.ModuleList([
            DecoderBlock(C, cfg.heads, cfg.mlp_ratio, P, cfg.temporal_window)
            for _ in range(cfg.decoder_depth)
        ])
        self.dec_norm = nn.LayerNorm(C)
        self.to_pixels = nn.Linear(C, cfg.patch_size * cfg.patch_size * 3)
        self.region_out = nn.ConvTranspose2d(cfg.latent_dim, 3, region, stride=region) if region else None
        self.mixer = BorderMixer(cfg.mixer_channels) if cfg.mixer_channels else None
        self.initialize_weights()

    @property
    def region_size(self) -> int:
        """Side in pixels of the squares the decoder's seams can run along: a local latent's region, else a
        patch."""
        cfg = self.cfg
        return cfg.image_size // math.isqrt(cfg.num_latent_tokens) if cfg.local_latents else cfg.patch_size

    def initialize_weights(self) -> None:
        """DiT-style: xavier-uniform linears with zero bias, 2-D sin-cos position embeddings (trainable), small
        normal token embeddings, temporal gates and the border mixer's last layer at zero.

        Sin-cos positions, as DiT and MAE use, give neighbouring patches similar embeddings from the first step
        (in a 500-step run the loss matched that of small random ones; the prior costs nothing).

        The output layer is not zeroed (unlike DiT's): a zero decoder would hide every data path from the
        causality tests and gives the reconstruction loss nothing to start from.
        """
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.patch_embed.proj.weight  # a conv that is a linear map on flattened patches
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        grid = self.cfg.image_size // self.cfg.patch_size
        sincos = build_sincos2d_pos_embed([grid, grid], self.cfg.width)  # [P, C], row-major like the patches
        for p in (self.enc_pos_embed, self.dec_pos_embed):
            p.data.copy_(sincos[None])
        for p in (self.latent_tokens, self.mask_token, self.latent_slot_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for block in self.decoder_blocks:
            if block.temporal is not None:
                nn.init.trunc_normal_(block.temporal.offset_key, std=0.02)
                nn.init.zeros_(block.temporal.gate)
        if self.mixer is not None:
            nn.init.zeros_(self.mixer.net[-1].weight)
            nn.init.zeros_(self.mixer.net[-1].bias)
        self.latent_scale.fill_(1.0)

    @torch.no_grad()
    def init_from_local_pca(self, frames: torch.Tensor) -> None:
        """Start local latents as the best linear code of each region of `frames` [N, 3, H, W] in [-1, 1].

        The region paths become the top-D principal directions of the frames' regions (uncentred: the
        transposed conv has no per-pixel bias; the first direction takes the mean), and both transformer
        outputs start at zero, so the untrained VAE already reconstructs as well as that linear code
        (26.5 dB on unseen footage at D = 64, 16x16 regions) and training only adds what it is missing.
        A data-dependent init, so the trainer calls it (`pca_init_frames`); `initialize_weights` stays data-free.
        """
        if self.region_in is None:
            raise ValueError("init_from_local_pca needs local latents (VAEConfig.local_latents)")
        if frames.dim() != 4 or frames.shape[1:] != (3, self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"frames must be [N, 3, {self.cfg.image_size}, {self.cfg.image_size}], "
                             f"got {tuple(frames.shape)}")
        r, D = self.region_in.kernel_size[0], self.cfg.latent_dim
        # Rows: one region each, flattened (channel, y, x) like the conv weights.
        regions = F.unfold(frames.float(), r, stride=r).transpose(1, 2).reshape(-1, 3 * r * r).double()
        if D > regions.shape[1]:
            raise ValueError(f"latent_dim {D} exceeds the {regions.shape[1]} numbers of a region")
        _, vectors = torch.linalg.eigh(regions.T @ regions / len(regions))  # ascending eigenvalues
        basis = vectors[:, -D:].flip(1).T.reshape(D, 3, r, r)  # strongest direction first
        for conv in (self.region_in, self.region_out):
            conv.weight.copy_(basis)
            nn.init.zeros_(conv.bias)
        for layer in (self.to_latent, self.to_pixels):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def scale_latent_channels(self, scale: torch.Tensor) -> None:
        """Multiply latent channel d by scale[d] [D]: encode returns the scaled latents, decode reads them.

        Folded into the layers on either side of the latents, so a checkpoint keeps its format and the
        reconstruction is unchanged. Local latents only: their channels are linear in the layers (the
        TiTok path normalises each token, which a per-channel scale would break). The trainer uses it to give
        the diffusion model unit-variance channels where one global `latent_scale` cannot (PCA-started
        latents span a 40x range of channel std).
        """
        if self.region_in is None:
            raise ValueError("scale_latent_channels needs local latents (VAEConfig.local_latents)")
        if scale.shape != (self.cfg.latent_dim,) or not bool((scale > 0).all()):
            raise ValueError(f"scale must be [{self.cfg.latent_dim}] positive values, got {tuple(scale.shape)}")
        s = scale.to(self.to_latent.weight)
        self.to_latent.weight.mul_(s[:, None])
        self.to_latent.bias.mul_(s)
        self.region_in.weight.mul_(s[:, None, None, None])
        self.region_in.bias.mul_(s)
        self.from_latent.weight.div_(s[None, :])
        self.region_out.weight.div_(s[:, None, None, None])  # ConvTranspose2d weight: [in = D, out, k, k]

    # ---- parameter groups (disjoint; together they are all parameters) ----

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        for m in (self.patch_embed, self.encoder_blocks, self.enc_norm, self.to_latent, self.region_in):
            if m is not None:
                yield from m.parameters()
        yield self.enc_pos_embed
        yield self.latent_tokens

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used only by cross-frame attention (empty when temporal_window == 1)."""
        for block in self.decoder_blocks:
            if block.temporal is not None:
                yield from block.temporal.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """The decoder's per-frame parameters (everything of the decoder except `temporal_parameters()`)."""
        temporal = {id(p) for p in self.temporal_parameters()}
        for m in (self.from_latent, self.decoder_blocks, self.dec_norm, self.to_pixels, self.region_out,
                  self.mixer):
            if m is not None:
                yield from (p for p in m.parameters() if id(p) not in temporal)
        yield from (self.mask_token, self.dec_pos_embed, self.latent_slot_embed)

    # ---- encoder ----

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, N, 3, H, W] in [-1, 1] -> latents [B, N, L, D] (x latent_scale), per frame."""
        self._check_frames(frames)
        B, N = frames.shape[:2]
        x = self.patch_embed(frames.flatten(0, 1)) + self.enc_pos_embed  # frames fold into the batch
        x = torch.cat([x, self.latent_tokens.expand(B * N, -1, -1).to(x.dtype)], dim=1)
        mask = self._encoder_mask(x.device)
        for block in self.encoder_blocks:
            x = block(x, mask)
        z = self.to_latent(self.enc_norm(x[:, self.cfg.num_patches:]))
        if self.region_in is not None:  # local latents: + the linear path of each (row-major) region, no norm
            z = (z + self.region_in(frames.flatten(0, 1)).flatten(2).transpose(1, 2)).float()
        else:
            # Unit L2 norm per token, as in the released code: with no KL term the latent magnitude is otherwise
            # unconstrained; bounding it keeps the scale diffusion sees fixed (then set to unit variance by
            # latent_scale). Done in float32: it is cheap and the latents are the diffusion model's data.
            z = F.normalize(z.float(), dim=-1)
        return (z * self.latent_scale).view(B, N, self.cfg.num_latent_tokens, self.cfg.latent_dim)

    # ---- decoder ----

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, L, D] -> frames [B, N, 3, H, W]; frame i depends on latents i - W + 1 .. i only."""
        self._check_latents(latents, "decode", "[B, N, L, D]", 4)
        frames, _ = self._decode_frames(latents, [None] * len(self.decoder_blocks))
        return frames

    def forward(self, frames: torch.Tensor, latent_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reconstruction (encode then decode), for training.

        `latent_noise` [B, N, L, D] (optional): noise in units of each latent channel's standard deviation (over
        this batch), added to the latents before decoding, so the decoder learns to decode imperfect latents
        (the DiT's) into frames without region seams rather than only the encoder's exact ones.
        """
        z = self.encode(frames)
        if latent_noise is not None:
            channel_std = z.detach().float().flatten(0, -2).std(0)  # [D]
            z = z + (latent_noise.to(z.device) * channel_std).to(z.dtype)
        return self.decode(z)

    def start_decode(
        self, batch_size: Optional[int] = None, device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> DecodeState:
        """A fresh incremental-decoding state; arguments left out are taken from the first `decode_next` call.

        `dtype`, if given, is the dtype latents are cast to before decoding.
        """
        return DecodeState(batch_size=batch_size, device=None if device is None else torch.device(device),
                           dtype=dtype, memory=[None] * len(self.decoder_blocks))

    def decode_next(self, latent: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Decode the next frame: latent [B, L, D] -> frame [B, 3, H, W], as `decode` of the whole sequence.

        Updates `state` in place, keeping per layer the memory of at most temporal_window - 1 frames.
        """
        self._check_latents(latent, "decode_next", "[B, L, D]", 3)
        if state.batch_size is None:
            state.batch_size = latent.shape[0]
        elif latent.shape[0] != state.batch_size:
            raise ValueError(f"decode_next: this state decodes batches of {state.batch_size}, got a latent "
                             f"with batch size {latent.shape[0]} (start a new state with start_decode())")
        if state.device is None:
            state.device = latent.device
        latent = latent.to(state.device)
        if state.dtype is not None:
            latent = latent.to(state.dtype)
        frames, memory = self._decode_frames(latent[:, None], state.memory)
        keep = self.cfg.temporal_window - 1  # >= 1 wherever a layer has memory
        for i, (past, mem) in enumerate(zip(state.memory, memory)):
            if mem is not None:  # append this frame, drop frames W - 1 or more back: bounded memory
                state.memory[i] = (mem if past is None else torch.cat([past, mem], dim=1))[:, -keep:]
        state.num_frames += 1
        return frames[:, 0]

    def _decode_frames(
        self, latents: torch.Tensor, past: list[Optional[torch.Tensor]]
    ) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
        """latents [B, N, L, D] of N consecutive frames; past: per layer, the memory of the frames before."""
        x = self._decoder_tokens(latents)
        mask = self._spatial_mask(x.device)
        memory = []
        for block, block_past in zip(self.decoder_blocks, past):
            x, mem = block(x, mask, block_past)
            memory.append(mem)
        return self._pixels(x, latents), memory

    def _decoder_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, L, D] -> decoder input tokens [B, N, P + L, C]."""
        B, N, L, _ = latents.shape
        P, C = self.cfg.num_patches, self.cfg.width
        lat = self.from_latent(latents / self.latent_scale) + self.latent_slot_embed  # [B, N, L, C]
        patches = (self.mask_token + self.dec_pos_embed).to(lat.dtype).expand(B, N, P, C)
        return torch.cat([patches, lat], dim=2)

    def _pixels(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Final tokens [B, N, P + L, C] (+ the frames' latents [B, N, L, D] for the linear path) -> frames."""
        # No tanh: the output is trained towards [-1, 1] by the L1 loss and left unsquashed so saturated
        # pixels keep their gradient; callers clamp when converting to uint8.
        frames = self._unpatchify(self.to_pixels(self.dec_norm(x[:, :, :self.cfg.num_patches])))
        if self.region_out is not None:
            B, N, L, D = latents.shape
            side = math.isqrt(L)
            grid = (latents / self.latent_scale).to(frames.dtype).reshape(B * N, side, side, D).permute(0, 3, 1, 2)
            frames = frames + self.region_out(grid).view(frames.shape)
        return frames if self.mixer is None else self.mixer(frames)

    @property
    def memory_slots(self) -> int:
        """Frames of temporal memory `decode_step` carries: temporal_window - 1 (at least 1 slot)."""
        return max(1, self.cfg.temporal_window - 1)

    def decode_step(
        self, latent: torch.Tensor, memory: torch.Tensor, mem_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pure-tensor `decode_next` for export: a fixed-size ring of temporal memory instead of a growing one.

        latent [B, L, D]; memory [decoder_depth, B, S, L, 2C] with S = `memory_slots`, the newest frame in the
        last slot, of which the last `mem_len` (int64 [1], 0..S) are real; the rest is padding (masked). Returns
        the frame [B, 3, H, W] and the memory after it (shifted by one slot, this frame appended); the caller
        keeps the count, min(mem_len + 1, S). All shapes but B are fixed, so nothing specialises on 0 or 1.
        """
        x = self._decoder_tokens(latent[:, None])
        mask = self._spatial_mask(x.device)
        new_memory = []
        for i, block in enumerate(self.decoder_blocks):
            x, mem = block.step(x, mask, memory[i], mem_len)
            new_memory.append(torch.cat([memory[i][:, 1:], mem.to(memory.dtype)], dim=1))
        return self._pixels(x, latent[:, None])[:, 0], torch.stack(new_memory)

    def _spatial_mask(self, device: torch.device) -> torch.Tensor:
        """[P + L, P + L], True = may attend: latent tokens see only latents; patches see the whole frame
        (with local latents: every patch, but only their own region's latent)."""
        P, L = self.cfg.num_patches, self.cfg.num_latent_tokens
        is_latent = torch.arange(P + L, device=device) >= P
        mask = ~is_latent[:, None] | is_latent[None, :]
        if self.cfg.local_latents:
            mask[:P, P:] = self._region_of_patch(device)[:, None] == torch.arange(L, device=device)[None, :]
        return mask

    def _encoder_mask(self, device: torch.device) -> Optional[torch.Tensor]:
        """None (all attend to all), or with local latents [P + L, P + L]: latent j sees its region's patches
        and itself, so what it encodes is that region; patches see every patch and latent as before."""
        if not self.cfg.local_latents:
            return None
        P, L = self.cfg.num_patches, self.cfg.num_latent_tokens
        mask = torch.ones(P + L, P + L, dtype=torch.bool, device=device)
        mask[P:, :P] = torch.arange(L, device=device)[:, None] == self._region_of_patch(device)[None, :]
        mask[P:, P:] = torch.eye(L, dtype=torch.bool, device=device)
        return mask

    def _region_of_patch(self, device: torch.device) -> torch.Tensor:
        """[P]: the latent token (row-major on its sqrt(L) grid) whose region holds each row-major patch."""
        grid, side = self.cfg.image_size // self.cfg.patch_size, math.isqrt(self.cfg.num_latent_tokens)
        cell = torch.arange(grid, device=device) // (grid // side)
        return (cell[:, None] * side + cell[None, :]).flatten()

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, P, p*p*3] -> [B, N, 3, H, W] (row-major patches, as PatchEmbed flattens them)."""
        B, N = x.shape[:2]
        p, g = self.cfg.patch_size, self.cfg.image_size // self.cfg.patch_size
        x = x.view(B, N, g, g, p, p, 3).permute(0, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, N, 3, g * p, g * p)

    # ---- input checks ----

    def _check_frames(self, frames: torch.Tensor) -> None:
        size = self.cfg.image_size
        if frames.dim() != 5:
            raise ValueError(f"encode expects frames [B, N, 3, H, W], got a {frames.dim()}-d tensor of shape "
                             f"{tuple(frames.shape)}")
        B, N, ch, H, W = frames.shape
        if not frames.is_floating_point():
            raise ValueError(f"encode expects float frames in [-1, 1], got dtype {frames.dtype} "
                             f"(convert uint8 with x / 127.5 - 1)")
        if N == 0:
            raise ValueError("encode expects at least one frame (N >= 1), got N = 0")
        if ch != 3:
            raise ValueError(f"encode expects 3 (RGB) channels at dim 2 of [B, N, 3, H, W], got {ch}")
        if (H, W) != (size, size):
            raise ValueError(f"encode expects {size}x{size} frames (the model's resolution), got {H}x{W}; "
                             f"engine.video_io resizes videos to the model's resolution")

    def _check_latents(self, latents: torch.Tensor, where: str, layout: str, dims: int) -> None:
        L, D = self.cfg.num_latent_tokens, self.cfg.latent_dim
        if latents.dim() != dims:
            raise ValueError(f"{where} expects latents {layout}, got a {latents.dim()}-d tensor of shape "
                             f"{tuple(latents.shape)}")
        if tuple(latents.shape[-2:]) != (L, D):
            raise ValueError(f"{where} expects latents with (L, D) = ({L}, {D}) in the last two dims, got "
                             f"{tuple(latents.shape[-2:])}")
        if dims == 4 and latents.shape[1] == 0:
            raise ValueError(f"{where} expects at least one frame (N >= 1), got N = 0")
