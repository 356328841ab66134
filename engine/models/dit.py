"""Temporally causal DiT: predicts clean latents x0 for a window of frames, each at its own noise level.

Tokens are frames x L latent tokens. Each frame's timestep drives adaLN-Zero modulation of that frame's
tokens only. Attention is block-causal over frames (full within a frame): tokens of frame i see frames <= i
and nothing later, and there are no global tokens. Temporal position is a rotary embedding over the
absolute frame index, so keys cached for a clean frame stay valid as the window moves; a learned embedding
tells the L token slots apart.

Rotary positions count from the first frame the network sees (0..W-1), the range it was trained on. Only
relative positions matter to attention, so a cached key is as good as a recomputed one for the same window;
when the window slides the sampler refreshes the cache anyway, because a clean frame's keys in deeper
layers depend on the earlier frames inside the window.

The K/V cache API serves the sampler: `forward_cached` runs a run of consecutive frames after the frames
held in a `KVCache` and returns the new frames' keys/values, which the caller appends once a frame is clean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.layers import LabelEmbedder, Mlp, TimestepEmbedder, apply_rotary, approx_gelu, modulate, \
    rotary_cos_sin
from engine.models.presets import ModelConfig

# Rotary base of the spatial pairs (DiTConfig.rope_space): their angles per row/column step run from 1 rad down to
# about 0.02, so neighbours differ clearly and the far side of a small grid does not wrap around.
SPACE_ROPE_THETA = 100.0

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys (rotary applied), values: [B, heads, tokens, head_dim]
# queries, new keys, new values, mask -> attention output over the cached keys/values followed by the new ones
PastKV = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class KVCache:
    """Keys/values of consecutive clean frames [start, start + num_frames), one entry per DiT block.

    Held in buffers with room for the whole window: a `forward_cached` call writes its new frames' keys and
    values after the cached ones in place and attends over a view, instead of concatenating (copying) the
    whole cache in every layer of every call. What a call writes past the cached frames is scratch until
    `append` keeps it.
    """

    start: int = 0
    num_frames: int = 0
    buffers: list[LayerKV] = field(default_factory=list)  # per block [B, heads, capacity, head_dim]
    tokens: int = 0  # tokens held (num_frames x tokens per frame)
    version: int = 0  # changes whenever the held keys/values do (lets a caller reuse what it built from them)

    @property
    def end(self) -> int:
        return self.start + self.num_frames

    @property
    def layers(self) -> list[LayerKV]:
        """Per block, views of the cached keys and values [B, heads, tokens, head_dim]."""
        n = self.tokens
        return [(k[:, :, :n], v[:, :, :n]) for k, v in self.buffers] if n else []

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, capacity: int) -> LayerKV:
        """Block `layer`'s cached keys/values followed by k, v [B, heads, M, head_dim] (written as scratch)."""
        kb, vb = self._reserve(layer, k, self.tokens + k.shape[2], capacity)
        end = self.tokens + k.shape[2]
        kb[:, :, self.tokens:end] = k
        vb[:, :, self.tokens:end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def append(self, new: list[LayerKV], num_frames: int, tokens_per_frame: int) -> None:
        """Keep the first `num_frames` frames of a `forward_cached` result (the ones now clean)."""
        if num_frames <= 0:
            return
        n = num_frames * tokens_per_frame
        for i, (k, v) in enumerate(new):
            kb, vb = self._reserve(i, k, self.tokens + n, 2 * (self.tokens + n))
            kb[:, :, self.tokens:self.tokens + n] = k[:, :, :n]
            vb[:, :, self.tokens:self.tokens + n] = v[:, :, :n]
        self.tokens += n
        self.num_frames += num_frames
        self.version += 1

    def reset(self, start: int) -> None:
        """Empty the cache (its buffers are reused); the next frames cached begin at `start`."""
        self.start, self.num_frames, self.tokens = start, 0, 0
        self.version += 1

    def _reserve(self, layer: int, like: torch.Tensor, needed: int, capacity: int) -> LayerKV:
        """Block `layer`'s buffers, holding at least `needed` tokens, shaped, typed and placed like `like`;
        a new buffer (`capacity` tokens) keeps the cached tokens, converted (e.g. autocast switched on)."""
        have = self.buffers[layer] if layer < len(self.buffers) else None
        B, H, _, d = like.shape
        if have is not None:
            k = have[0]
            if k.shape[2] >= needed and (k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device) == (
                    B, H, d, like.dtype, like.device):
                return have
        size = max(needed, capacity)
        kb, vb = like.new_empty(B, H, size, d), like.new_empty(B, H, size, d)
        if have is not None and self.tokens:
            kb[:, :, :self.tokens] = have[0][:, :, :self.tokens]
            vb[:, :, :self.tokens] = have[1][:, :, :self.tokens]
        if have is None:
            self.buffers.append((kb, vb))
        else:
            self.buffers[layer] = (kb, vb)
        return kb, vb


def attend_apart(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                 past_v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q over past_k/past_v [B, heads, P, head_dim] followed by k/v, one softmax over both,
    without concatenating them: the scores against each part are computed apart. mask [queries, P + new
    keys] as for the concatenation (True: attend); every query must see at least one new key. Float32
    whatever autocast says (as the fused attention operator accumulates); the result in v's dtype."""
    P = past_k.shape[2]
    with torch.autocast(q.device.type, enabled=False):
        q = q.float() * q.shape[-1] ** -0.5
        s_past = (q @ past_k.float().transpose(-1, -2)).masked_fill(~mask[:, :P], float("-inf"))
        s_new = (q @ k.float().transpose(-1, -2)).masked_fill(~mask[:, P:], float("-inf"))
        top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))
        p_past, p_new = (s_past - top).exp(), (s_new - top).exp()
        total = p_past.sum(-1, keepdim=True) + p_new.sum(-1, keepdim=True)
        out = (p_past @ past_v.float() + p_new @ v.float()) / total
    return out.to(v.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary time positions and optional cached keys/values in front."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                past: PastKV | None) -> tuple[torch.Tensor, LayerKV]:
        """`past(q, k, v, mask)` attends over the cached keys/values followed by the new ones (None: nothing
        cached)."""
        B, S, C = x.shape
        qkv = self.qkv(x).reshape(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(qkv[:2], cos, sin).unbind(0)  # one rotation for queries and keys
        v = qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if past is None else past(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(B, S, C)), (k, v)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with per-frame adaLN-Zero modulation."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=approx_gelu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, past: PastKV | None) -> tuple[torch.Tensor, LayerKV]:
        # x: [B, M, L, H] tokens of M frames; modulation: [B, M, 1, 6H], adaLN_modulation(c) for each frame.
        B, M, L, H = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        h, kv = self.attn(modulate(self.norm1(x), shift1, scale1).reshape(B, M * L, H), cos, sin, mask, past)
        x = torch.addcmul(x, gate1, h.reshape(B, M, L, H))  # x + gate * h in one operator
        x = torch.addcmul(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x, kv


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class ConditioningTable:
    """adaLN modulations precomputed for a set of timesteps (a DDIM grid) and class labels.

    A frame's modulation depends only on its timestep and the class, and sampling visits n + 1 timesteps,
    so the sampler computes them once per run instead of once per frame per row: a third of the DiT's
    weights (the adaLN projections) then drop out of every call, which matters most for one-frame calls.
    """

    index_of_t: torch.Tensor  # [T + 1] position of each timestep in the table, -1 where absent
    blocks: list[torch.Tensor]  # per block [B or 1, K, 1, 6H]
    final: torch.Tensor  # [B or 1, K, 1, 2H]
    class_label: torch.Tensor | None

    def check_call(self, t: torch.Tensor, class_label: torch.Tensor | None) -> None:
        """A call may use this table: the labels it was built for, the same timesteps in every batch row."""
        if (class_label is None) != (self.class_label is None) or (
                class_label is not None and not torch.equal(class_label, self.class_label)):
            raise ValueError("the conditioning table was built for other class labels")
        if t.shape[0] > 1 and bool((t[0] != t).any()):
            raise ValueError("a conditioning table needs the same timesteps in every batch row")

    def rows_for(self, t: torch.Tensor, class_label: torch.Tensor | None) -> torch.Tensor:
        """Table rows for per-frame timesteps t [B, M] (the same in every batch row), checking the labels."""
        self.check_call(t, class_label)
        idx = self.index_of_t[t[0]]
        if bool((idx < 0).any()):
            raise ValueError("timesteps outside the conditioning table")
        return idx


class DiT(nn.Module):
    """x0-predicting diffusion transformer over [B, N, L, D] latents with per-frame timesteps [B, N]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dit
        self.window = cfg.window
        self.num_tokens, self.latent_dim = cfg.vae.num_latent_tokens, cfg.vae.latent_dim
        self.num_timesteps = cfg.diffusion.num_timesteps
        self.num_classes, self.causal = d.num_classes, d.attention == "causal"
        self.heads, self.rope_theta, self.rope_space = d.heads, d.rope_theta, d.rope_space
        self.x_embed = nn.Linear(self.latent_dim, d.hidden)
        self.slot_embed = nn.Parameter(torch.zeros(1, 1, self.num_tokens, d.hidden))
        self.t_embed = TimestepEmbedder(d.hidden)
        self.y_embed = LabelEmbedder(d.num_classes, d.hidden) if d.num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(d.hidden, d.heads, d.mlp_ratio) for _ in range(d.depth))
        self.final = FinalLayer(d.hidden, self.latent_dim)
        self._masks: dict[tuple, torch.Tensor | None] = {}
        self._rotary_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, zero biases, adaLN-Zero (modulation and output start at zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.slot_embed, std=0.02)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    # -- checks -------------------------------------------------------------------------------------------

    def _check_inputs(self, z: torch.Tensor, t: torch.Tensor, class_label: torch.Tensor | None) -> None:
        if z.dim() != 4 or tuple(z.shape[2:]) != (self.num_tokens, self.latent_dim):
            raise ValueError(f"latents must be [B, N, {self.num_tokens}, {self.latent_dim}], got {tuple(z.shape)}")
        if tuple(t.shape) != tuple(z.shape[:2]):
            raise ValueError(f"timesteps must be [B, N] = {tuple(z.shape[:2])}, got {tuple(t.shape)}")
        if t.dtype.is_floating_point:
            raise ValueError(f"timesteps must be integers 0..{self.num_timesteps}, got dtype {t.dtype}")
        if z.shape[1] == 0:
            raise ValueError("latents hold no frames (N = 0)")
        if class_label is not None:
            if self.y_embed is None:
                raise ValueError("this DiT is unconditional; class_label must be None")
            if class_label.shape != z.shape[:1]:
                raise ValueError(f"class_label must be [B] = [{z.shape[0]}], got {tuple(class_label.shape)}")

    # -- core -----------------------------------------------------------------------------------------------

    def _conditioning(self, t: torch.Tensor, class_label: torch.Tensor | None) -> torch.Tensor:
        c = self.t_embed(t)  # [B, M, H]
        if self.y_embed is not None:
            if class_label is None:  # unconditional use of a class-conditional model: the null class
                class_label = torch.full(t.shape[:1], self.null_class, dtype=torch.long, device=t.device)
            c = c + self.y_embed(class_label)[:, None, :]
        return c[:, :, None, :]

    def _mask(self, past_frames: int, new_frames: int, device: torch.device) -> torch.Tensor | None:
        """Block-causal mask of new tokens over (past + new) tokens; None when nothing must be hidden."""
        if not self.causal or new_frames == 1:
            return None
        key = (past_frames, new_frames, str(device))
        if key not in self._masks:
            L = self.num_tokens
            q_frame = torch.arange(new_frames, device=device).repeat_interleave(L) + past_frames
            k_frame = torch.arange(past_frames + new_frames, device=device).repeat_interleave(L)
            self._masks[key] = k_frame[None, :] <= q_frame[:, None]
        return self._masks[key]

    @torch.no_grad()
    def conditioning_table(self, timesteps: torch.Tensor, class_label: torch.Tensor | None = None
                           ) -> ConditioningTable:
        """Precompute adaLN modulations for these timesteps (e.g. a DDIM grid) and class labels [B]."""
        timesteps = timesteps.to(self.x_embed.weight.device)
        c = self._conditioning(timesteps[None].expand(1 if class_label is None else len(class_label), -1),
                               class_label)
        index = torch.full((self.num_timesteps + 1,), -1, dtype=torch.long, device=timesteps.device)
        index[timesteps] = torch.arange(len(timesteps), device=timesteps.device)
        return ConditioningTable(index, [b.adaLN_modulation(c) for b in self.blocks],
                                 self.final.adaLN_modulation(c), class_label)

    def _modulations(self, t: torch.Tensor, class_label: torch.Tensor | None,
                     table: ConditioningTable | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        if table is None:
            c = self._conditioning(t, class_label)
            return [b.adaLN_modulation(c) for b in self.blocks], self.final.adaLN_modulation(c)
        idx = table.rows_for(t, class_label)
        return [m[:, idx] for m in table.blocks], table.final[:, idx]

    def _run(self, z: torch.Tensor, t: torch.Tensor, first_position: int, past: KVCache | None,
             class_label: torch.Tensor | None, table: ConditioningTable | None = None
             ) -> tuple[torch.Tensor, list[LayerKV]]:
        block_mods, final_mod = self._modulations(t, class_label, table)
        past_frames = past.num_frames if past is not None else 0
        mask = self._mask(past_frames, z.shape[1], z.device)
        extend = None
        if past is not None:
            capacity = self.window * self.num_tokens
            extend = [lambda q, k, v, mask, i=i: F.scaled_dot_product_attention(
                q, *past.extend(i, k, v, capacity), attn_mask=mask) for i in range(len(self.blocks))]
        return self._core(z, block_mods, final_mod, first_position, mask, extend)

    def _rotary(self, M: int, first_position: int | torch.Tensor, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the rotary positions of M frames from `first_position`; memoised for int positions."""
        key = (M, first_position, str(device)) if isinstance(first_position, int) else None
        if key is None or key not in self._rotary_tables:
            tokens = torch.arange(M * self.num_tokens, device=device)
            head_dim = self.x_embed.out_features // self.heads
            cos, sin = rotary_cos_sin(tokens // self.num_tokens + first_position, head_dim, self.rope_theta)
            if self.rope_space:  # the slowest half of the pairs: row, then column (see DiTConfig.rope_space)
                side = math.isqrt(self.num_tokens)
                slot, quarter = tokens % self.num_tokens, head_dim // 4
                row_cos, row_sin = rotary_cos_sin(slot // side, quarter, SPACE_ROPE_THETA)
                col_cos, col_sin = rotary_cos_sin(slot % side, quarter, SPACE_ROPE_THETA)
                cos = torch.cat([cos[..., :quarter], row_cos, col_cos], -1)  # quarter pairs each: time, rows, cols
                sin = torch.cat([sin[..., :quarter], row_sin, col_sin], -1)
            if key is None:
                return cos, sin
            self._rotary_tables[key] = (cos, sin)
        return self._rotary_tables[key]

    def _core(self, z: torch.Tensor, block_mods: list[torch.Tensor] | tuple[torch.Tensor, ...],
              final_mod: torch.Tensor, first_position: int | torch.Tensor, mask: torch.Tensor | None,
              past: list[PastKV] | None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, list[LayerKV]]:
        """The block math shared by `forward`, `forward_cached` and `step`: M new frames after the past keys.

        `first_position` (an int, or a 1-element tensor in `step`) is the rotary position of the first new frame;
        `past[i]` attends over block i's cached keys/values followed by the new ones (None: nothing cached);
        `rotary`: the cos/sin tables of the new frames' positions when the caller has them already.
        """
        x = self.x_embed(z) + self.slot_embed
        cos, sin = self._rotary(z.shape[1], first_position, z.device) if rotary is None else rotary
        new_kv = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, block_mods[i], cos, sin, mask, past[i] if past is not None else None)
            new_kv.append(kv)
        return self.final(x, final_mod), new_kv

    def step(self, z: torch.Tensor, block_mods: torch.Tensor, final_mod: torch.Tensor, past_k: torch.Tensor,
             past_v: torch.Tensor, past_len: torch.Tensor, *, apart: bool = False,
             rotary: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pure-tensor `forward_cached` for export (torch.export / AOTInductor / ONNX / TensorRT).

        z [B, M, L, D] new frames; block_mods [depth, B, M, 1, 6H] and final_mod [B, M, 1, 2H] their adaLN
        modulations (rows of a `ConditioningTable`); past_k / past_v [depth, B, heads, S, L, head_dim]: S >= 1
        cache slots of which the last `past_len` (int64 [1], 0..S) hold the cached frames; the first
        S - past_len slots are padding, masked out. So "no cache" is S = 1, past_len = 0, and the graph never
        meets a zero-sized dimension (torch.export would specialise it). Rotary positions: the cached frames
        sit at 0..past_len-1, the new ones at past_len..past_len+M-1, as in `forward_cached`.
        Returns x0 [B, M, L, D] and the new frames' keys/values [depth, B, heads, M * L, head_dim].
        `apart`: attend with `attend_apart` (no copy of the cache per layer; for compiled graphs) instead of
        concatenating the cache and the new keys for one fused attention operator (what exporters map).
        `rotary`: the new frames' cos/sin tables, `DiT._rotary(M, past_len)` made by the caller (who knows past_len
        as a number), so a compiled graph reads two small inputs instead of evaluating pow, cos and sin per
        element in every layer; None: computed here from the past_len tensor.
        """
        _, M, L, _ = z.shape
        S = past_k.shape[3]
        pad = S - past_len  # slots before this index are padding
        q_frame = torch.arange(M * L, device=z.device) // L + S
        k_frame = torch.arange((S + M) * L, device=z.device) // L
        mask = (k_frame[None, :] <= q_frame[:, None]) & (k_frame[None, :] >= pad)
        if not self.causal:
            raise ValueError("a K/V cache needs causal attention; this DiT was built with attention='full'")
        if apart:
            past = [lambda q, k, v, mask, i=i: attend_apart(q, k, v, past_k[i].flatten(2, 3),
                                                            past_v[i].flatten(2, 3), mask)
                    for i in range(len(self.blocks))]
        else:
            past = [lambda q, k, v, mask, i=i: F.scaled_dot_product_attention(
                q, torch.cat([past_k[i].flatten(2, 3).to(k.dtype), k], 2),
                torch.cat([past_v[i].flatten(2, 3).to(v.dtype), v], 2), attn_mask=mask)
                for i in range(len(self.blocks))]
        x0, kv = self._core(z, block_mods.unbind(0), final_mod, past_len, mask, past, rotary)
        return x0, torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])

    def forward(self, z: torch.Tensor, t: torch.Tensor, class_label: torch.Tensor | None = None,
                table: ConditioningTable | None = None) -> torch.Tensor:
        """x0 predictions for a whole window: z [B, N, L, D], t [B, N] ints 0..T (0 = clean), N <= window."""
        self._check_inputs(z, t, class_label)
        if z.shape[1] > self.window:
            raise ValueError(f"at most {self.window} frames fit the window, got {z.shape[1]}")
        return self._run(z, t, 0, None, class_label, table)[0]

    def forward_cached(self, z: torch.Tensor, t: torch.Tensor, cache: KVCache,
                       class_label: torch.Tensor | None = None, table: ConditioningTable | None = None
                       ) -> tuple[torch.Tensor, list[LayerKV]]:
        """Run frames [cache.end, cache.end + M) attending to the cached frames; return x0 and their K/V.

        Rotary positions are relative to `cache.start`, the first frame of the window.

        Equals `forward` over the window [cache.start, cache.end + M) restricted to the new frames.
        """
        self._check_inputs(z, t, class_label)
        if not self.causal:
            raise ValueError("a K/V cache needs causal attention; this DiT was built with attention='full'")
        if cache.num_frames + z.shape[1] > self.window:
            raise ValueError(f"cache ({cache.num_frames}) + new frames ({z.shape[1]}) exceed the window "
                             f"of {self.window}")
        return self._run(z, t, cache.num_frames, cache, class_label, table)
