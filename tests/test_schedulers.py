import itertools
import math

import numpy as np
import pytest
import torch

from engine.schedulers import ADScheduler, FoPPScheduler, make_training_scheduler
from engine.schedulers.fopp import log_prefix_counts, log_suffix_counts


def compositions(F, T):
    return [c for c in itertools.product(range(1, T + 1), repeat=F) if all(a <= b for a, b in zip(c, c[1:]))]


def test_counts_match_combinatorics_without_overflow():
    F, T = 16, 1000
    log_de = log_prefix_counts(F, T)
    log_ds = log_suffix_counts(F, T)
    for i, j in [(1, 1), (5, 17), (16, 1000), (16, 1), (9, 500)]:
        exact = math.comb(j + i - 2, i - 1)  # non-decreasing prefixes of length i ending at j
        assert math.isclose(math.exp(log_de[i - 1, j - 1]), exact, rel_tol=1e-9)
        exact_s = math.comb((T - j) + (F - i), F - i)  # completions t_i = j .. t_F
        assert math.isclose(math.exp(log_ds[i - 1, j - 1]), exact_s, rel_tol=1e-9)
    assert math.exp(log_de[-1, -1]) > 1e32  # beyond int64


@pytest.mark.parametrize("F,T", [(3, 3), (3, 8), (4, 5), (5, 4)])
def test_fopp_exact_distribution_by_enumeration(F, T):
    sched = FoPPScheduler(F, T)
    comps = compositions(F, T)
    total = 0.0
    for f in range(F):
        for tf in range(1, T + 1):
            valid = [c for c in comps if c[f] == tf]
            probs = np.array([sched.composition_probability(list(c), f) for c in valid])
            # P(f, t_f) = 1 / (F T) and uniform over the compositions consistent with (f, t_f).
            np.testing.assert_allclose(probs.sum(), 1 / (F * T), rtol=1e-9)  # float64 sums: ~1e-15 apart
            np.testing.assert_allclose(probs, probs.mean(), rtol=1e-9)
            total += probs.sum()
    assert math.isclose(total, 1.0, rel_tol=1e-9)
    # An invalid (decreasing) composition has probability zero.
    assert sched.composition_probability([2, 1] + [T] * (F - 2), 0) == 0.0


def test_fopp_samples_match_exact_probabilities():
    F, T = 3, 4
    sched = FoPPScheduler(F, T)
    g = torch.Generator().manual_seed(0)
    t, anchor = sched.sample(200_000, generator=g, return_anchor=True)
    keys = [tuple(r) + (int(a),) for r, a in zip(t.tolist(), anchor.tolist())]
    counts = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    for (*comp, f), c in counts.items():
        p = sched.composition_probability(comp, f)
        assert p > 0
        assert abs(c / len(keys) - p) < 5 * math.sqrt(p / len(keys)) + 1e-4


def test_fopp_chi_square_marginal_at_full_size():
    F, T = 16, 1000
    sched = FoPPScheduler(F, T)
    g = torch.Generator().manual_seed(3)
    t, anchor = sched.sample(200_000, generator=g, return_anchor=True)
    f = 7
    tf = t[anchor == f, f]
    bins = 20  # t_f ~ U{1..T}: 20 equal bins of 50 values
    observed = torch.bincount((tf - 1) // (T // bins), minlength=bins).double()
    expected = observed.sum() / bins
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # 99.9% quantile of chi-square with 19 dof


def test_fopp_valid_on_device_and_batch():
    t = FoPPScheduler(16, 1000).sample(4096, generator=torch.Generator().manual_seed(0), device="cpu")
    assert t.shape == (4096, 16) and t.dtype == torch.long
    assert int(t.min()) >= 1 and int(t.max()) <= 1000
    assert bool((t.diff(dim=1) >= 0).all())
    # Not degenerate: frames differ within compositions (unlike `equal`).
    assert float((t[:, -1] - t[:, 0]).float().mean()) > 100


def test_fopp_is_seeded():
    a = FoPPScheduler(8, 100).sample(64, generator=torch.Generator().manual_seed(5))
    b = FoPPScheduler(8, 100).sample(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_baselines_marginals():
    g = torch.Generator().manual_seed(0)
    T = 10
    # seeded integer draws (the same on every CPU); 50,000 of them put each frequency within about 3 sqrt(p / n)
    # = 0.004 of 1 / T, and 0.01 (0.03 for the ~5,000-draw conditional below) leaves room for another seed
    eq = make_training_scheduler("equal", 6, T).sample(50_000, generator=g)
    assert bool((eq == eq[:, :1]).all())
    np.testing.assert_allclose(torch.bincount(eq[:, 0], minlength=T + 1)[1:].numpy() / 50_000, 1 / T, atol=0.01)
    ind = make_training_scheduler("independent", 6, T).sample(50_000, generator=g)
    for i in range(6):
        np.testing.assert_allclose(torch.bincount(ind[:, i], minlength=T + 1)[1:].numpy() / 50_000, 1 / T, atol=0.01)
    assert abs(float(np.corrcoef(ind[:, 0].numpy(), ind[:, 1].numpy())[0, 1])) < 0.02
    naive = make_training_scheduler("naive-nondecreasing", 6, T).sample(50_000, generator=g)
    assert bool((naive.diff(dim=1) >= 0).all()) and int(naive.min()) >= 1 and int(naive.max()) <= T
    np.testing.assert_allclose(torch.bincount(naive[:, 0], minlength=T + 1)[1:].numpy() / 50_000, 1 / T, atol=0.01)
    # t_2 | t_1 = 4 is uniform on 4..T.
    sub = naive[naive[:, 0] == 4, 1]
    np.testing.assert_allclose(torch.bincount(sub, minlength=T + 1)[4:].numpy() / len(sub), 1 / (T - 3), atol=0.03)


def test_clean_prefix_keeps_constraint():
    sched = make_training_scheduler("fopp", 8, 100, clean_prefix_p=0.5)
    t = sched.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert bool((t.diff(dim=1) >= 0).all())
    with_prefix = t[:, 0] == 0
    assert abs(float(with_prefix.float().mean()) - 0.5) < 0.02
    assert bool((t[:, -1] > 0).all())  # the prefix never covers the whole clip
    k = (t == 0).sum(1)[with_prefix]
    assert set(k.tolist()) == set(range(1, 8))


@pytest.mark.parametrize(
    "args, match",
    [(("fopp", 0, 10), "num_frames"), (("fopp", 4, 0), "num_timesteps"), (("nope", 4, 4), "scheduler must be")],
)
def test_training_scheduler_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        make_training_scheduler(*args)
    with pytest.raises(ValueError, match="clean_prefix_p"):
        make_training_scheduler("fopp", 4, 4, clean_prefix_p=1.5)


# ---- AD inference rows -------------------------------------------------------------------------------


def check_rows(ad, N, C=0):
    rows = list(ad.rows(N, C))
    levels = [rows[0].level_from] + [r.level_to for r in rows]
    n = ad.num_steps
    assert np.all(rows[0].level_from[:C] == 0) and np.all(rows[0].level_from[C:] == n)
    for prev, row in zip(rows, rows[1:]):
        assert np.array_equal(prev.level_to, row.level_from)
    for row in rows:
        assert np.all(np.diff(row.level_from) >= 0) and np.all(np.diff(row.level_to) >= 0)
        assert np.all(row.level_to <= row.level_from)
        assert np.all(row.level_from - row.level_to <= 1)
        assert row.active.any()
        assert not row.active[:C].any()
        a, b = row.window
        assert 0 <= a < b <= C + N and b - a <= ad.window
        idx = np.flatnonzero(row.active)
        assert idx.min() >= a and idx.max() < b
        # Frames still at pure noise are only in the window when they start moving this row.
        assert row.active[a:b][row.level_from[a:b] == n].all()
    assert np.all(levels[-1] == 0)
    return rows


@pytest.mark.parametrize("N", [1, 5, 16])
def test_ad_s0_lockstep(N):
    rows = check_rows(ADScheduler(50, 0, 16), N)
    assert len(rows) == 50
    for r in rows:
        assert len(set(r.level_from.tolist())) == 1 and r.active.all()


def test_ad_s_at_least_n_is_frame_by_frame():
    for s in (10, 25):
        rows = check_rows(ADScheduler(10, s, 16), 6)
        assert len(rows) == 60
        for r in rows:
            assert r.active.sum() == 1


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7, 10])
@pytest.mark.parametrize("N", [1, 4, 16])
def test_ad_row_count_inside_window(s, N):
    rows = check_rows(ADScheduler(10, s, 16), N)
    assert len(rows) == 10 + (N - 1) * min(s, 10)


def test_ad_follows_predecessor_at_distance_s():
    rows = check_rows(ADScheduler(50, 5, 16), 8)
    for r in rows:
        lv = r.level_to
        for i in range(1, 8):
            if 0 < lv[i - 1]:
                assert lv[i] == min(lv[i - 1] + 5, 50)


@pytest.mark.parametrize("s", [0, 3, 50])
def test_row_level_slices_equal_the_full_arrays(s):
    # Row.levels serves the samplers' per-row slices from the in-flight segment when it can
    for row in ADScheduler(50, s, 16, min_context=1).rows(40, num_context=3):
        for start in range(0, 43, 3):
            for stop in range(start, 44, 5):
                got_from, got_to = row.levels(start, stop)
                assert np.array_equal(got_from, row.level_from[start:stop])
                assert np.array_equal(got_to, row.level_to[start:stop])


@pytest.mark.parametrize("s", [0, 1, 2, 5, 10, 25, 50])
def test_ad_long_videos_finish_for_every_s(s):
    ad = ADScheduler(50, s, 16, min_context=1)
    rows = check_rows(ad, 128)
    if s == 0:
        assert len(rows) == 50 * (1 + math.ceil((128 - 16) / 15))  # chunked synchronous
    for r in rows:  # every window past the first frames keeps a clean frame for context
        a, b = r.window
        if r.level_from[0] == 0:
            assert r.level_from[a] == 0


@pytest.mark.parametrize("s", [0, 3, 50])
def test_ad_context_frames_stay_clean(s):
    rows = check_rows(ADScheduler(20, s, 8, min_context=2), 20, C=5)
    for r in rows:
        a, b = r.window
        assert (r.level_from[a:b] == 0).sum() >= 2


def test_ad_level_matrix_shape():
    m = ADScheduler(4, 1, 16).level_matrix(3)
    assert m.shape == (4 + 2 + 1, 3)
    assert m[0].tolist() == [4, 4, 4] and m[-1].tolist() == [0, 0, 0]
    assert m[1].tolist() == [3, 4, 4] and m[2].tolist() == [2, 3, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_steps": 0}, "num_steps"), ({"s": -1}, "s must"), ({"window": 1}, "window"),
     ({"min_context": 16}, "min_context"), ({"min_context": -1}, "min_context")],
)
def test_ad_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ADScheduler(**kwargs)


def test_ad_bad_counts():
    with pytest.raises(ValueError, match="num_frames"):
        list(ADScheduler().rows(0))
    with pytest.raises(ValueError, match="num_context"):
        list(ADScheduler().rows(3, -1))
