"""Code paths chosen from the CPU's capabilities (native bfloat16: AMX or AVX512-BF16), each tested on both sides
whatever this machine has: the detection itself, and the export's choice (the pipeline's and the trainer's are
in test_pipeline.py and test_trainer.py)."""

from __future__ import annotations

import pytest
import torch

from engine.backends import export as E
from engine import device as device_mod


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True), (True, True)])
def test_native_bf16_is_either_unit(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert device_mod.cpu_supports_bf16() is (amx or avx512_bf16)


@pytest.mark.parametrize("native", [False, True])
def test_a_bf16_export_on_cpu_notes_emulation_only_without_native_bf16(native, monkeypatch, tiny_checkpoint,
                                                                       tmp_path):
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: native)
    monkeypatch.setattr(E, "require_backend", lambda backend, device: None)  # no compiler needed: it stops early
    notes: list[str] = []
    with pytest.raises(E.ExportError, match="max-frames"):  # refused after the precision note, before any graph
        E.export(tiny_checkpoint, tmp_path / "out", "aoti", dtype="bf16", max_frames=1, log=notes.append)
    assert any("no native bfloat16" in n for n in notes) == (not native), notes
    assert not (tmp_path / "out").exists()
