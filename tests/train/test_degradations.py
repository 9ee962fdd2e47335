"""Tests for adsrt.train.degradations: contract, determinism, physics and level conventions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data

from adsrt.errors import AdsrtError, DegradationError
from adsrt.train import degradations as dg
from adsrt.train.degradations import (
    BASE_DEGRADATIONS,
    DEGRADATIONS,
    LEVELS,
    MIX_ORDER,
    STYLES,
    DegradationSpec,
    check_level,
    defocus_kernel,
    degrade,
    gaussian_kernel,
    haze_composite,
    haze_depth,
    motion_kernel,
    parse_specs,
    plan_mix,
    rain_composite,
    sample_blur_kernel,
    sample_level,
    shake_kernel,
    shake_path,
)

NAMES = list(DEGRADATIONS)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """A real photo, 96x96 uint8 (textured: fur, eyes, background)."""
    img = data.chelsea()[50:290, 100:340]
    return cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def coffee_small() -> np.ndarray:
    return cv2.resize(data.coffee(), (96, 64), interpolation=cv2.INTER_AREA)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------------
# registry and levels


def test_registry_is_plain_dict_with_levels() -> None:
    assert type(DEGRADATIONS) is dict
    assert NAMES == ["noise", "blur", "rain", "haze", "snow", "lowlight", "mix"]
    assert set(LEVELS) == set(DEGRADATIONS)
    assert set(BASE_DEGRADATIONS) == set(MIX_ORDER) == set(NAMES) - {"mix"}
    for name, r in LEVELS.items():
        assert r.lo <= r.train_lo <= r.default <= r.train_hi <= r.hi, name
        assert r.unit, name
        assert check_level(name, r.default) == r.default


def test_documented_ranges() -> None:
    assert (LEVELS["noise"].hi, LEVELS["noise"].default) == (100.0, 25.0)
    assert (LEVELS["haze"].lo, LEVELS["haze"].hi, LEVELS["haze"].train_lo, LEVELS["haze"].train_hi) == (
        0.2,
        4.0,
        0.5,
        2.5,
    )
    assert (LEVELS["lowlight"].train_lo, LEVELS["lowlight"].train_hi, LEVELS["lowlight"].default) == (
        1.5,
        4.5,
        3.0,
    )
    assert (LEVELS["mix"].lo, LEVELS["mix"].hi) == (0.0, 1.0)


def test_check_level() -> None:
    assert check_level("noise", 25) == 25.0
    assert isinstance(check_level("blur", 2), float)
    for name, level in [
        ("noise", 100.5),
        ("noise", -1),
        ("blur", 0.1),
        ("haze", 5),
        ("mix", 1.5),
        ("rain", 0),
    ]:
        with pytest.raises(DegradationError, match="outside"):
            check_level(name, level)
    with pytest.raises(DegradationError, match="noise, blur"):
        check_level("fog", 1.0)
    with pytest.raises(DegradationError):
        check_level("noise", float("nan"))
    with pytest.raises(DegradationError):
        check_level("noise", "abc")  # type: ignore[arg-type]


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        check_level("nope", 1)
    assert issubclass(DegradationError, AdsrtError)


@pytest.mark.parametrize("name", NAMES)
def test_sample_level_in_training_range(name: str) -> None:
    r = LEVELS[name]
    levels = [sample_level(name, rng(s)) for s in range(20)]
    assert all(r.train_lo <= v <= r.train_hi for v in levels)
    assert sample_level(name, rng(3)) == sample_level(name, rng(3))
    assert len(set(levels)) > 1


# --------------------------------------------------------------------------------------------------
# specs


def test_parse_specs_valid() -> None:
    assert parse_specs("noise:25") == [DegradationSpec("noise", 25.0)]
    assert parse_specs("blur") == [DegradationSpec("blur", None)]
    assert parse_specs("noise:25+blur:2") == [DegradationSpec("noise", 25.0), DegradationSpec("blur", 2.0)]
    assert parse_specs(" Haze : 1.2 + lowlight ") == [
        DegradationSpec("haze", 1.2),
        DegradationSpec("lowlight"),
    ]
    assert parse_specs("mix:0") == [DegradationSpec("mix", 0.0)]
    assert str(DegradationSpec("noise", 25)) == "noise:25"
    assert str(DegradationSpec("blur", 2.5)) == "blur:2.5"
    assert str(DegradationSpec("noise")) == "noise"
    specs = parse_specs("rain:3+haze:1.5+noise")
    assert parse_specs("+".join(map(str, specs))) == specs


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "fog",
        "noise:abc",
        "noise:",
        "noise:25+",
        "+noise",
        "noise:500",
        "blur:0",
        "noise:nan",
        "noise;25",
    ],
)
def test_parse_specs_invalid(text: str) -> None:
    with pytest.raises(DegradationError):
        parse_specs(text)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(DegradationError) as info:
        parse_specs("noise:10+fog:2")
    for name in NAMES:
        assert name in str(info.value)


def test_spec_validates_eagerly() -> None:
    with pytest.raises(DegradationError):
        DegradationSpec("fog")
    with pytest.raises(DegradationError):
        DegradationSpec("noise", 101)
    assert DegradationSpec("noise", 25).level == 25.0


# --------------------------------------------------------------------------------------------------
# image contract


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_varies_across_seeds(name: str, small: np.ndarray) -> None:
    fn = DEGRADATIONS[name]
    level = LEVELS[name].default
    a = fn(small, level, rng(1))
    b = fn(small, level, rng(1))
    c = fn(small, level, rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, small)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_dtype_and_shape_preserved(name: str, dtype: type, coffee_small: np.ndarray) -> None:
    image = coffee_small if dtype is np.uint8 else (coffee_small / 255.0).astype(dtype)
    out = DEGRADATIONS[name](image, LEVELS[name].train_hi, rng(0))
    assert out.dtype == dtype
    assert out.shape == image.shape == (64, 96, 3)
    if dtype is not np.uint8:
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.array_equal(image, coffee_small if dtype is np.uint8 else (coffee_small / 255.0).astype(dtype))


def test_uint8_and_float_agree(small: np.ndarray) -> None:
    u = DEGRADATIONS["haze"](small, 1.5, rng(0))
    f = DEGRADATIONS["haze"]((small / 255.0).astype(np.float32), 1.5, rng(0))
    assert np.abs(u.astype(np.float32) - f * 255.0).max() <= 0.5 + 1e-3  # only the final rounding differs


def test_uint8_round_trip_is_exact(small: np.ndarray) -> None:
    np.testing.assert_array_equal(degrade(small, [], 0), small)


def test_noise_level_zero_is_refused_as_documented() -> None:
    with pytest.raises(DegradationError, match=r"outside \(0, 100\]"):
        parse_specs("noise:0")
    assert parse_specs("noise:0.5")[0].level == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((32, 32, 1), np.uint8),
        np.zeros((32, 32, 3), np.int32),
        np.zeros((32, 32, 3), np.float16),
        np.zeros((0, 32, 3), np.uint8),
        np.full((32, 32, 3), 200.0, np.float32),  # a 0..255 float image
        np.full((32, 32, 3), np.nan, np.float32),
        np.zeros((2, 32, 32, 3), np.uint8),
    ],
)
def test_bad_arrays_rejected(bad: np.ndarray) -> None:
    with pytest.raises(DegradationError):
        degrade(bad, "noise:10", 0)
    with pytest.raises(DegradationError):
        DEGRADATIONS["blur"](bad, 2.0, rng())


def test_non_array_rejected() -> None:
    with pytest.raises(DegradationError):
        degrade([[[0, 0, 0]]], "noise:10", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_functions_reject_out_of_range_levels(name: str, small: np.ndarray) -> None:
    with pytest.raises(DegradationError):
        DEGRADATIONS[name](small, LEVELS[name].hi + 1.0, rng())


# --------------------------------------------------------------------------------------------------
# degrade()


def test_degrade_accepts_str_spec_list_and_seed(small: np.ndarray) -> None:
    a = degrade(small, "noise:25+blur:2", 5)
    b = degrade(small, [DegradationSpec("noise", 25), DegradationSpec("blur", 2)], np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    c = degrade(small, DegradationSpec("noise", 25), 5)
    np.testing.assert_array_equal(c, degrade(small, "noise:25", 5))
    assert not np.array_equal(a, degrade(small, "blur:2+noise:25", 5))  # order matters
    assert degrade(small, "rain", None).shape == small.shape


def test_degrade_composes_left_to_right_in_float(small: np.ndarray) -> None:
    x = (small / 255.0).astype(np.float32)
    g = rng(9)
    expected = DEGRADATIONS["blur"](DEGRADATIONS["haze"](x, 1.0, g), 2.0, g)
    np.testing.assert_array_equal(degrade(x, "haze:1+blur:2", 9), expected)


def test_degrade_samples_missing_level(small: np.ndarray) -> None:
    x = (small / 255.0).astype(np.float32)
    g = rng(4)
    level = sample_level("noise", g)
    expected = DEGRADATIONS["noise"](x, level, g)
    np.testing.assert_array_equal(degrade(x, "noise", 4), expected)


def test_degrade_rejects_non_specs(small: np.ndarray) -> None:
    with pytest.raises(DegradationError):
        degrade(small, ["noise:25"], 0)  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------
# severity


@pytest.mark.parametrize("name", NAMES)
def test_psnr_decreases_with_level(name: str, small: np.ndarray) -> None:
    r = LEVELS[name]
    levels = [r.train_lo, (r.train_lo + r.train_hi) / 2, r.train_hi]
    for seed in (0, 1):
        psnrs = [psnr_uint8(small, DEGRADATIONS[name](small, lv, rng(seed))) for lv in levels]
        assert psnrs[0] > psnrs[1] > psnrs[2], (name, seed, psnrs)


def test_noise_std_matches_sigma() -> None:
    grey = np.full((128, 128, 3), 0.5, np.float32)
    for sigma in (5.0, 15.0, 25.0, 50.0):
        out = DEGRADATIONS["noise"](grey, sigma, rng(0))
        # sigma 50 clips at 0.5 +- 2.5 sigma, which shaves about 1% off the std.
        assert abs(np.std((out - grey) * 255.0) - sigma) / sigma < 0.03, sigma
    grey8 = np.full((128, 128, 3), 128, np.uint8)
    out8 = DEGRADATIONS["noise"](grey8, 25.0, rng(0))
    assert abs(np.std(out8.astype(np.float64) - 128) - 25.0) < 0.6


def expected_clipped_noise_psnr(image: np.ndarray, sigma: float) -> float:
    """PSNR that clip(round(x + N(0, sigma^2))) should give, computed analytically per grey value."""
    v = np.arange(256, dtype=np.float64)
    erf = np.vectorize(math.erf)

    def cdf(z: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + erf(z / math.sqrt(2.0)))

    def pdf(z: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    a, b = -v / sigma, (255.0 - v) / sigma  # where the noise would push the value out of 0..255
    inside = sigma**2 * ((cdf(b) - cdf(a)) - (b * pdf(b) - a * pdf(a)))
    mse_per_value = inside + v**2 * cdf(a) + (255.0 - v) ** 2 * (1.0 - cdf(b)) + 1.0 / 12.0  # + rounding
    counts = np.bincount(image.ravel(), minlength=256)
    mse = float((counts * mse_per_value).sum() / counts.sum())
    return 10.0 * math.log10(255.0**2 / mse)


def test_noise25_psnr_on_real_photos(astronaut: np.ndarray) -> None:
    # Chelsea has almost no clipped pixels, so it sits at the textbook 20*log10(255/25) = 20.17 dB.
    chelsea = data.chelsea()
    value = psnr_uint8(chelsea, degrade(chelsea, "noise/awgn:25", 0))
    assert abs(value - 20.2) < 0.3, value
    # A quarter of the astronaut's channel values are below 26 (black helmet and background): clipping
    # at 0 removes part of the noise there and lifts the PSNR to ~20.9 dB. Check against the exact value.
    value = psnr_uint8(astronaut, degrade(astronaut, "noise/awgn:25", 0))
    expected = expected_clipped_noise_psnr(astronaut, 25.0)
    assert 20.17 < value < 21.2, value
    assert abs(value - expected) < 0.05, (value, expected)


def test_lowlight_darkens_monotonically(small: np.ndarray) -> None:
    means = [float(DEGRADATIONS["lowlight"](small, lv, rng(0)).mean()) for lv in (0.5, 1.5, 3.0, 4.5, 6.0)]
    assert small.mean() > means[0]
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), means
    # Roughly a gamma-2.2 encode of 2**-stops: 3 stops scale the encoded values by about 0.39.
    assert 0.3 < means[2] / small.mean() < 0.5


def test_lowlight_is_noisy() -> None:
    grey = np.full((64, 64, 3), 0.6, np.float32)
    out = DEGRADATIONS["lowlight"](grey, 4.0, rng(0))
    assert out.std() > 0.01  # shot + read noise, not a plain darkening


# --------------------------------------------------------------------------------------------------
# blur


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3, 6.0])
def test_gaussian_kernel(sigma: float) -> None:
    k = gaussian_kernel(sigma)
    assert k.dtype == np.float32 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    c = k.shape[0] // 2
    assert k[c, c] == k.max()


@pytest.mark.parametrize("length", [1.0, 3.0, 5.5, 9.0, 25.0])
@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 137.0])
def test_motion_kernel_sums_to_one(length: float, angle: float) -> None:
    k = motion_kernel(length, angle)
    assert k.dtype == np.float32 and k.shape[0] % 2 == 1
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert (k >= 0).all()
    # Point-symmetric about the centre, so it does not shift the image.
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-6)


def test_motion_kernel_geometry() -> None:
    delta = motion_kernel(1.0, 45.0)
    assert delta.max() == pytest.approx(1.0)
    horizontal = motion_kernel(9.0, 0.0)
    c = horizontal.shape[0] // 2
    assert horizontal[c].sum() == pytest.approx(1.0, abs=1e-5)
    assert np.count_nonzero(horizontal[c] > 1e-6) == 9
    np.testing.assert_allclose(motion_kernel(9.0, 90.0), horizontal.T, atol=1e-6)
    # 45 degrees points up-right on screen: the mass lies along the anti-diagonal.
    diag = motion_kernel(7.0, 45.0)
    i, j = np.indices(diag.shape)
    assert diag[np.abs(i + j - (diag.shape[0] - 1)) <= 1].sum() > 0.99
    c = diag.shape[0] // 2
    assert diag[:c, c + 1 :].sum() > 0.3 and diag[c + 1 :, :c].sum() > 0.3  # top-right and bottom-left
    assert diag[:c, :c].sum() + diag[c + 1 :, c + 1 :].sum() < 1e-3


def test_kernel_errors() -> None:
    with pytest.raises(DegradationError):
        gaussian_kernel(0.0)
    with pytest.raises(DegradationError):
        motion_kernel(0.5, 0.0)


def test_blur_uses_every_style(small: np.ndarray) -> None:
    kinds = {sample_blur_kernel(2.0, rng(s))[1] for s in range(40)}
    assert kinds == set(STYLES["blur"])
    x = (small / 255.0).astype(np.float32)
    for seed in range(4):
        kernel, _ = sample_blur_kernel(2.0, rng(seed))
        expected = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(
            DEGRADATIONS["blur"](x, 2.0, rng(seed)), np.clip(expected, 0, 1), atol=1e-6
        )


# --------------------------------------------------------------------------------------------------
# rain, haze, snow


def test_rain_composite_formula() -> None:
    g = rng(0)
    clean = g.random((16, 20, 3))
    streaks = g.random((16, 20)) * 0.5
    trans = 0.7 + 0.3 * g.random((16, 20))
    airlight = np.array([0.9, 0.85, 0.95])
    expected = np.empty_like(clean)
    for ch in range(3):
        expected[..., ch] = trans * (clean[..., ch] + streaks) + (1 - trans) * airlight[ch]
    out = rain_composite(clean, streaks, trans, airlight)
    assert out.dtype == np.float32 and out.shape == clean.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rain_composite(clean, 0.0, 1.0, 0.9), clean, atol=1e-6)


def test_haze_composite_formula() -> None:
    g = rng(1)
    clean = g.random((16, 20, 3))
    depth = g.random((16, 20))
    beta, airlight = 1.7, 0.83
    t = np.exp(-beta * depth)[..., None]
    expected = clean * t + airlight * (1 - t)
    out = haze_composite(clean, depth, beta, airlight)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(haze_composite(clean, depth, 0.0, airlight), clean, atol=1e-6)


def test_haze_depth_and_far_fog(small: np.ndarray) -> None:
    d = haze_depth(small, rng(0))
    assert d.shape == small.shape[:2] and d.dtype == np.float32
    assert 0.0 <= d.min() <= 0.2 and d.max() == pytest.approx(1.0)
    assert d[:16].mean() > d[-16:].mean() + 0.3  # top of the frame is far
    out = DEGRADATIONS["haze"](small, 2.0, rng(0)).astype(np.float64)
    change = np.abs(out - small).mean(axis=(1, 2))
    assert change[:16].mean() > 2 * change[-16:].mean()  # fog is denser far away


def test_rain_streaks_are_near_vertical_lines() -> None:
    black = np.zeros((96, 96, 3), np.float32)
    out = DEGRADATIONS["rain"](black, 4.0, rng(0))[..., 0]
    out = out - cv2.GaussianBlur(out, (0, 0), 6)  # drop the smooth veil, keep the streaks
    along = np.abs(np.diff(out, axis=0)).mean()  # between rows: small inside a near-vertical streak
    across = np.abs(np.diff(out, axis=1)).mean()
    assert along < 0.6 * across, (along, across)


def test_snow_adds_bright_flakes() -> None:
    dark = np.full((96, 96, 3), 0.1, np.float32)
    out = DEGRADATIONS["snow"](dark, 3.0, rng(0))
    assert (out > 0.6).mean() > 0.002  # flakes
    assert np.median(out) > 0.1  # veil lifts the background


# --------------------------------------------------------------------------------------------------
# mix


def test_plan_mix_picks_two_distinct_in_physical_order() -> None:
    seen = set()
    for seed in range(60):
        plan = plan_mix(0.5, rng(seed))
        names = [s.name for s in plan]
        assert len(plan) == 2 and len(set(names)) == 2
        assert "mix" not in names
        assert names == sorted(names, key=MIX_ORDER.index)
        for spec in plan:
            r = LEVELS[spec.name]
            assert spec.level == pytest.approx((r.train_lo + r.train_hi) / 2)
        seen.update(names)
    assert seen == set(BASE_DEGRADATIONS)
    low, high = plan_mix(0.0, rng(0)), plan_mix(1.0, rng(0))
    assert [s.level for s in low] == [LEVELS[s.name].train_lo for s in low]
    assert [s.level for s in high] == [LEVELS[s.name].train_hi for s in high]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mix_applies_exactly_the_planned_two(seed: int, small: np.ndarray) -> None:
    x = (small / 255.0).astype(np.float32)
    out = DEGRADATIONS["mix"](x, 0.7, rng(seed))
    g = rng(seed)
    plan = plan_mix(0.7, g)
    expected = x
    for spec in plan:
        expected = DEGRADATIONS[spec.name](expected, spec.level, g)
    np.testing.assert_array_equal(out, expected)
    # Not just one of them: applying only the first planned degradation gives something else.
    assert not np.array_equal(out, DEGRADATIONS[plan[0].name](x, plan[0].level, rng(seed)))


def test_module_all_is_importable() -> None:
    for name in dg.__all__:
        assert hasattr(dg, name), name


# --------------------------------------------------------------------------------------------------
# families and styles


def test_styles_parse_print_and_reject() -> None:
    (spec,) = parse_specs("Blur / Defocus : 2")
    assert (spec.name, spec.style, spec.level) == ("blur", "defocus", 2.0)
    assert str(spec) == "blur/defocus:2" and parse_specs(str(spec)) == [spec]
    assert str(parse_specs("noise/awgn")[0]) == "noise/awgn"
    for bad in ("blur/bokeh:2", "rain/heavy", "noise/:25"):
        with pytest.raises(DegradationError, match="style"):
            parse_specs(bad)
    with pytest.raises(DegradationError, match="style"):
        DegradationSpec("noise", 25, "pink")
    with pytest.raises(DegradationError, match="style"):
        DEGRADATIONS["blur"](np.zeros((8, 8, 3), np.uint8), 2.0, rng(0), style="bokeh")
    assert all(sum(p.values()) == pytest.approx(1.0) for p in STYLES.values())


@pytest.mark.parametrize("name", sorted(STYLES))
def test_pinning_the_drawn_style_changes_nothing(name: str, small: np.ndarray) -> None:
    # The style is drawn first either way, so pinning the one a seed would draw gives the same image, and
    # pinning another changes only the style, not the rest of the stream.
    for seed in range(6):
        free = degrade(small, f"{name}:3", seed)
        drawn = next(st for st in STYLES[name] if np.array_equal(degrade(small, f"{name}/{st}:3", seed), free))
        assert drawn in STYLES[name]
    styles = {st: degrade(small, f"{name}/{st}:3", 0) for st in STYLES[name]}
    assert len({im.tobytes() for im in styles.values()}) == len(styles)


@pytest.mark.parametrize("style", ["awgn", "shot", "correlated"])
def test_noise_styles_keep_sigma_at_mid_grey(style: str) -> None:
    grey = np.full((160, 160, 3), 0.5, np.float32)
    for sigma in (10.0, 25.0):
        out = DEGRADATIONS["noise"](grey, sigma, rng(1), style=style)
        assert abs(np.std((out - grey) * 255.0) - sigma) / sigma < 0.04, (style, sigma)


def test_shot_noise_grows_with_signal_and_correlated_noise_is_correlated() -> None:
    dark, bright = np.full((128, 128, 3), 0.1, np.float32), np.full((128, 128, 3), 0.9, np.float32)
    sd = [np.std(DEGRADATIONS["noise"](x, 25.0, rng(2), style="shot") - x) for x in (dark, bright)]
    assert sd[1] > 1.3 * sd[0]  # variance a x + b
    grey = np.full((128, 128, 3), 0.5, np.float32)

    def neighbour_corr(style: str) -> float:
        n = DEGRADATIONS["noise"](grey, 20.0, rng(3), style=style)[..., 0] - 0.5
        return float(np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1])

    assert abs(neighbour_corr("awgn")) < 0.05 and neighbour_corr("correlated") > 0.3


@pytest.mark.parametrize("radius", [0.7, 2.0, 4.5, 12.0])
def test_defocus_kernel_is_a_disk(radius: float) -> None:
    k = defocus_kernel(radius)
    assert k.dtype == np.float32 and k.shape[0] % 2 == 1 and k.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)
    c = k.shape[0] // 2
    i, j = np.indices(k.shape)
    r = np.hypot(i - c, j - c)
    assert k[r > radius + 1].sum() == 0.0  # nothing outside the rim
    if radius >= 2:  # flat inside, unlike a Gaussian
        inner = k[r < radius - 1]
        assert inner.max() - inner.min() < 1e-6
    # Its second moment is that of a uniform disk, r^2 / 2 (per axis r^2 / 4): the std is r / 2.
    var = float((k * ((i - c) ** 2)).sum())
    assert var == pytest.approx(radius**2 / 4, rel=0.15, abs=0.05)


def test_shake_kernels_are_strokes_of_the_stated_extent() -> None:
    for seed in range(8):
        path = shake_path(rng(seed))
        k = shake_kernel(path, 9.0)
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and (k >= 0).all()
        ys, xs = np.nonzero(k > 1e-4)
        assert 8 <= max(np.ptp(ys), np.ptp(xs)) <= 11  # extent 9 px (+ bilinear spill)
        # A connected stroke, not scattered dots.
        n, _ = cv2.connectedComponents((k > 1e-6).astype(np.uint8), connectivity=8)
        assert n == 2
    assert not np.array_equal(shake_kernel(shake_path(rng(0)), 9.0), shake_kernel(shake_path(rng(1)), 9.0))
    with pytest.raises(DegradationError):
        shake_kernel(shake_path(rng(0)), 0.5)


def test_rain_veil_and_lens_drops() -> None:
    grey = np.full((128, 128, 3), 0.3, np.float32)
    # Heavier rain: more streaks and a thicker veil lift a dark frame more, for every seed.
    for seed in range(4):
        light, heavy = (DEGRADATIONS["rain"](grey, lv, rng(seed)).mean() for lv in (1.0, 5.0))
        assert heavy > light > 0.3


def test_haze_airlight_is_coloured_and_uneven(small: np.ndarray) -> None:
    white = np.ones((64, 64, 3), np.float32)
    black = np.zeros((64, 64, 3), np.float32)
    tints = []
    for seed in range(12):
        out = DEGRADATIONS["haze"](black, 4.0, rng(seed))  # on black, the fog shows the airlight itself
        far = out[:8].reshape(-1, 3)
        tints.append(far.mean(0)[2] - far.mean(0)[0])
        assert far.std(0).max() > 0  # non-uniform
    assert min(tints) < -0.02 and max(tints) > 0.02  # warm and bluish airlights both occur
    assert DEGRADATIONS["haze"](white, 2.0, rng(0)).max() <= 1.0


def test_lowlight_partial_exposure_keeps_bright_sky(small: np.ndarray) -> None:
    # A bright sky over dark ground: across seeds, some draws keep the sky bright (a backlit or night scene)
    # while the ground goes dark, others darken everything.
    scene = np.concatenate([np.full((48, 96, 3), 0.95, np.float32), np.full((48, 96, 3), 0.35, np.float32)])
    ratios = []
    for seed in range(16):
        out = DEGRADATIONS["lowlight"](scene, 4.0, rng(seed))
        ratios.append(out[:40].mean() / max(out[56:].mean(), 1e-3))
        assert out[56:].mean() < 0.35
    assert max(ratios) > 2 * min(ratios)
