"""A DiT stand-in for `CachedSampler` whose `forward_cached` runs the pure-tensor `DiT.step`.

Two runtimes share it: the graphs `ardiff-export` writes (engine.export) and `backend="compile"`
(engine.compiled). Conditioning stays with the eager model (once per run); everything the stand-in does not
override is delegated to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from engine.models.dit import ConditioningTable, KVCache

StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # the signature of DiT.step


class StepDiT:
    """`forward_cached` through `runner` (DiT.step's signature) instead of the eager model.

    `dtype`: the runner's floating dtype (inputs are cast to it); None: whatever the caller runs in.
    `past_slots`: pad the cache to this many frames, so a runner specialised on shapes sees one shape for
    every cache length; None: pass exactly the cached frames (at least one slot, see `DiT.step`). A subclass
    may choose per call (`_slots`).
    `rotary`: also hand the runner the new frames' rotary cos/sin tables (two more arguments, see `DiT.step`).
    `past_dtype`: the padded cache's dtype when the runner wants another than its own (a runner that attends
    in float32 then reads float32 keys instead of converting them in every call); None: as the runner's.
    """

    def __init__(self, dit: nn.Module, runner: StepFn, dtype: torch.dtype | None = None,
                 past_slots: int | None = None, rotary: bool = False, past_dtype: torch.dtype | None = None
                 ) -> None:
        self._dit, self.runner, self.dtype, self.past_slots = dit, runner, dtype, past_slots
        self.rotary, self.past_dtype = rotary, past_dtype
        self.depth, self.heads = len(dit.blocks), dit.heads
        self.head_dim = dit.x_embed.out_features // dit.heads
        self._stacked: tuple[Any, int, int, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dit, name)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dtype is None else x.to(self.dtype)

    def conditioning_table(self, timesteps: torch.Tensor, class_label: torch.Tensor | None = None
                           ) -> ConditioningTable:
        table = self._dit.conditioning_table(timesteps, class_label)
        # stacked [depth, B, K, 1, 6H] in the runner's dtype, and the rows calls asked for (see _modulations)
        table.stacked = self._cast(torch.stack(table.blocks))
        table.final_cast = self._cast(table.final)
        table.call_rows = {}
        return table

    def _modulations(self, table: ConditioningTable, t: torch.Tensor, class_label: torch.Tensor | None,
                     batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The table's rows for timesteps t [B, M], as [depth, B, M, 1, 6H] and [B, M, 1, 2H] in standard strides.

        Memoised per timesteps: a sampler asks for the same few (a one-frame call for one of n + 1 levels) in
        every row, and the gather, the checks and the copies cost more than the rest of the call's Python.
        """
        key = (tuple(t[0].tolist()), batch)
        rows = table.call_rows.get(key)
        if rows is None:
            idx = table.rows_for(t, class_label)
            block_mods, final_mod = table.stacked[:, :, idx], table.final_cast[:, idx]
            if block_mods.shape[1] != batch:
                block_mods, final_mod = block_mods.expand(-1, batch, -1, -1, -1), final_mod.expand(batch, -1, -1, -1)
            if len(table.call_rows) >= 128:  # bounded: many-frame patterns (small s) hold up to 0.3 MB each
                table.call_rows.clear()
            # standard strides, even on size-1 dimensions: a runner specialised on strides then sees one layout
            rows = table.call_rows[key] = (block_mods.clone(memory_format=torch.contiguous_format),
                                           final_mod.clone(memory_format=torch.contiguous_format))
        else:
            table.check_call(t, class_label)
        return rows

    def _slots(self, cache: KVCache, frames: int) -> int:
        """Cache slots S the runner sees for a call of `frames` new frames after `cache`."""
        return max(1, cache.num_frames) if self.past_slots is None else self.past_slots

    def _past(self, cache: KVCache, batch: int, like: torch.Tensor, S: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cached keys/values as [depth, B, heads, S, L, head_dim], padding first, and how many frames they
        hold (int64 [1]); rebuilt only when the cache changes."""
        if self._stacked is not None:
            held, version, held_batch, held_slots, past = self._stacked
            if held is cache and version == cache.version and held_batch == batch and held_slots == S:
                return past
        P, L = cache.num_frames, self._dit.num_tokens
        dtype = self.past_dtype or (like.dtype if self.dtype is None else self.dtype)
        k = torch.zeros(self.depth, batch, self.heads, S, L, self.head_dim, dtype=dtype, device=like.device)
        v = torch.zeros_like(k)
        if P:
            layers = cache.layers
            k[:, :, :, S - P:] = torch.stack([keys for keys, _ in layers]).unflatten(3, (P, L))
            v[:, :, :, S - P:] = torch.stack([values for _, values in layers]).unflatten(3, (P, L))
        past = (k, v, torch.tensor([P], dtype=torch.long, device=like.device))
        self._stacked = (cache, cache.version, batch, S, past)
        return past

    def forward_cached(self, z: torch.Tensor, t: torch.Tensor, cache: KVCache,
                       class_label: torch.Tensor | None = None, table: ConditioningTable | None = None
                       ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        self._dit._check_inputs(z, t, class_label)
        if table is None or not hasattr(table, "stacked"):
            table = self.conditioning_table(t[0].unique(), class_label)
        B = z.shape[0]
        block_mods, final_mod = self._modulations(table, t, class_label, B)
        past_k, past_v, past_len = self._past(cache, B, block_mods, self._slots(cache, z.shape[1]))
        z = self._cast(z).clone(memory_format=torch.contiguous_format)
        rotary = self._dit._rotary(z.shape[1], cache.num_frames, z.device) if self.rotary else ()
        x0, new_k, new_v = self.runner(z, block_mods, final_mod, past_k, past_v, past_len, *rotary)
        return x0, list(zip(new_k.unbind(0), new_v.unbind(0)))
