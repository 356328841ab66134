"""The heat maps' colours: matplotlib's 256-entry viridis table, stored once in engine.visualize."""

from __future__ import annotations

import numpy as np

from engine.visualize import VIRIDIS, VIRIDIS_U8, colormap


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours in [0, 1]."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, y * 24389 / 27)


def test_table_is_matplotlibs_viridis() -> None:
    table = np.asarray(VIRIDIS)
    assert table.shape == (256, 3)
    # Entries as matplotlib's _cm_listed._viridis_data has them (6 decimals there and here: exact).
    assert VIRIDIS[0] == (0.267004, 0.004874, 0.329415)
    assert VIRIDIS[32] == (0.278826, 0.175490, 0.483397)
    assert VIRIDIS[100] == (0.166617, 0.463708, 0.558119)
    assert VIRIDIS[128] == (0.127568, 0.566949, 0.550556)
    assert VIRIDIS[200] == (0.440137, 0.811138, 0.340967)
    assert VIRIDIS[255] == (0.993248, 0.906157, 0.143936)


def test_lightness_rises_monotonically() -> None:
    lightness = _lightness(np.asarray(VIRIDIS))
    assert np.all(np.diff(lightness) > 0.2)  # the source table: every step lighter (min step is 0.28 L*)
    # uint8 rounding moves L* by at most ~0.2; the shipped colours never get darker by more than that.
    assert np.all(np.diff(_lightness(VIRIDIS_U8 / 255.0)) > -0.2)
    assert lightness[0] < 16 and lightness[-1] > 90  # dark purple (clean) to light yellow (noise)


def test_colormap_indexes_the_table_as_matplotlib_does() -> None:
    values = np.array([0.0, 32 / 256, 100 / 256 + 1e-9, 0.5, 1.0, 1.5, -1.0, np.nan])
    got = colormap(values)
    assert got.dtype == np.uint8 and got.shape == (8, 3)
    assert got[:5].tolist() == VIRIDIS_U8[[0, 32, 100, 128, 255]].tolist()
    assert got[1].tolist() == [71, 45, 123]  # round(255 * viridis[32]); five-stop interpolation gave (64, 42, 112)
    assert got[5].tolist() == got[4].tolist() and got[6].tolist() == got[7].tolist() == got[0].tolist()
    assert np.array_equal(colormap((np.arange(256) + 0.5) / 256), VIRIDIS_U8)  # every entry, in order
