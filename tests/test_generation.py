"""imageae.generate.sampling: seeded latent sampling, the mixture sampler, EM, Slerp, contact sheets."""

import math

import numpy as np
import pytest

from conftest import build_tiny_vae
from imageae.generate import sampling as generation
from imageae.generate.sampling import (
    contact_sheet, decode_latents, fit_mixture, interpolate_latents, iter_samples, mixture_log_likelihood,
    run_in_blocks, run_in_blocks_tf, sample_latents, select_mixture,
)


@pytest.fixture(scope="module")
def vae():
    """An untrained tiny VAE; only its latent size and mixture variables matter here."""
    return build_tiny_vae(latent_dim=3, mixture_components=3)


@pytest.fixture
def mixture_vae():
    """A tiny VAE whose stored mixture is set by hand: three far-apart components in 2-d."""
    model = build_tiny_vae(mixture_components=3)
    weights = np.array([0.2, 0.3, 0.5])
    means = np.array([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    stds = np.array([[0.5, 1.0], [1.0, 0.5], [0.25, 0.25]], np.float32)
    model.mixture_log_weights.assign(np.log(weights).astype(np.float32))
    model.mixture_means.assign(means)
    model.mixture_log_vars.assign(np.log(stds**2))
    return model, weights, means, stds


def nearest_component(z, means):
    return np.linalg.norm(z[:, None, :] - means[None], axis=-1).argmin(axis=1)


# ----------------------------------------------------------------------------- sample_latents


@pytest.mark.parametrize("sampler", ["normal", "gmm"])
def test_same_seed_gives_identical_latents_and_another_seed_different_ones(vae, sampler):
    a = sample_latents(vae, 16, seed=7, sampler=sampler)
    assert a.dtype == np.float32 and a.shape == (16, 3)
    np.testing.assert_array_equal(sample_latents(vae, 16, seed=7, sampler=sampler), a)
    assert not np.allclose(sample_latents(vae, 16, seed=8, sampler=sampler), a)


def test_normal_sampler_draws_from_the_standard_normal_prior(vae):
    z = sample_latents(vae, 4000, seed=1)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.1)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.05)


def test_temperature_scales_the_prior_spread_and_nothing_else(vae):
    z = sample_latents(vae, 4000, seed=2)
    cool = sample_latents(vae, 4000, seed=2, temperature=0.5)
    np.testing.assert_allclose(cool, 0.5 * z, rtol=1e-6)  # the same draws, scaled
    np.testing.assert_allclose(cool.std(axis=0), 0.5, atol=0.03)


def test_untrained_mixture_is_the_prior(vae):
    # until a mixture is fitted every component is N(0, I): gmm samples look like prior samples
    z = sample_latents(vae, 4000, seed=3, sampler="gmm")
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.1)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.05)


def test_gmm_sampler_draws_each_component_by_its_weight_around_its_mean(mixture_vae):
    model, weights, means, stds = mixture_vae
    z = sample_latents(model, 6000, seed=4, sampler="gmm")
    component = nearest_component(z, means)
    np.testing.assert_allclose(np.bincount(component, minlength=3) / len(z), weights, atol=0.02)
    for k in range(3):
        drawn = z[component == k]
        np.testing.assert_allclose(drawn.mean(axis=0), means[k], atol=0.08)
        np.testing.assert_allclose(drawn.std(axis=0), stds[k], rtol=0.08)


def test_gmm_temperature_narrows_each_component_but_keeps_its_mean(mixture_vae):
    model, _, means, stds = mixture_vae
    z = sample_latents(model, 6000, seed=5, sampler="gmm", temperature=0.5)
    component = nearest_component(z, means)
    for k in range(3):
        drawn = z[component == k]
        np.testing.assert_allclose(drawn.mean(axis=0), means[k], atol=0.05)
        np.testing.assert_allclose(drawn.std(axis=0), 0.5 * stds[k], rtol=0.08)


def test_zero_latents_is_an_empty_batch(vae):
    assert sample_latents(vae, 0, seed=0).shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="uniform"), "sampler must be one of normal, gmm, got 'uniform'"),
        (dict(temperature=0.0), "temperature must be positive and at most 100 .*, got 0.0"),
        (dict(temperature=-1.0), "temperature must be positive"),
        (dict(temperature=math.nan), "temperature must be positive.*got nan"),
        (dict(temperature=math.inf), "temperature must be positive.*got inf"),
        (dict(temperature=101.0), "at most 100"),
        (dict(seed=2**63), r"seed must be a whole number in 0..2\*\*63-1 \(9223372036854775807\), got 9223372036854775808"),
        (dict(seed=-1), r"seed must be a whole number in 0..2\*\*63-1"),
        (dict(n=-1), "n must be >= 0, got -1"),
    ],
)
def test_bad_sampler_temperature_or_count_is_refused(vae, kwargs, message):
    n = kwargs.pop("n", 4)
    with pytest.raises(ValueError, match=message):
        sample_latents(vae, n, **kwargs)


@pytest.mark.parametrize("seed", [1.5, None, "3", True, np.float64(2.0)])
def test_a_seed_that_is_not_a_whole_number_is_refused_not_rounded(vae, seed):
    # 1.5 used to give seed 1's latents, and None TensorFlow's internal message
    with pytest.raises(TypeError, match=r"seed must be a whole number in 0..2\*\*63-1, got"):
        sample_latents(vae, 2, seed=seed)


def test_the_largest_seed_works_and_numpy_integers_are_seeds(vae):
    assert sample_latents(vae, 2, seed=2**63 - 1).shape == (2, 3)
    np.testing.assert_array_equal(sample_latents(vae, 2, seed=np.int64(5)), sample_latents(vae, 2, seed=5))


@pytest.mark.parametrize("sampler", ["normal", "gmm"])
def test_latents_of_an_image_do_not_depend_on_the_range_asked_for(vae, sampler, monkeypatch):
    # Blocks of 8 here (1024 in use), so ranges cross several block boundaries.
    monkeypatch.setattr(generation, "SAMPLE_BLOCK", 8)
    whole = sample_latents(vae, 30, seed=9, sampler=sampler)
    for start, n in [(0, 5), (3, 11), (8, 8), (7, 23), (29, 1)]:
        np.testing.assert_array_equal(sample_latents(vae, n, seed=9, sampler=sampler, start=start),
                                      whole[start : start + n])
    assert sample_latents(vae, 0, seed=9, sampler=sampler, start=13).shape == (0, 3)


def test_streamed_samples_are_the_same_images_for_every_batch_size(monkeypatch):
    monkeypatch.setattr(generation, "SAMPLE_BLOCK", 16)
    model = build_tiny_vae(seed=3)
    whole = decode_latents(model, sample_latents(model, 40, seed=2, temperature=0.7))
    for batch_size in (1, 7, 16, 64):
        batches = list(iter_samples(model, 40, seed=2, temperature=0.7, batch_size=batch_size))
        assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        np.testing.assert_array_equal(np.concatenate(batches), whole)
    assert list(iter_samples(model, 0, seed=2)) == []


def test_model_calls_run_on_fixed_size_blocks_in_eager_and_graph_code():
    import tensorflow as tf

    shapes = []

    def fn(block):
        shapes.append(tuple(block.shape))
        return (block * 2.0,)

    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    eager = np.concatenate([y for (y,) in run_in_blocks(fn, x, block=4)])
    np.testing.assert_array_equal(eager, 2 * x)
    assert shapes == [(4, 3)] * 3  # the last block padded to 4 rows
    graph = tf.function(lambda t: run_in_blocks_tf(fn, t, (tf.TensorSpec([3], tf.float32),), block=4))
    np.testing.assert_array_equal(graph(tf.constant(x))[0].numpy(), 2 * x)
    np.testing.assert_array_equal(graph(tf.zeros([0, 3]))[0].numpy(), np.zeros((0, 3)))


# -------------------------------------------------------------------------------- fit_mixture

CLUSTER_MEANS = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
CLUSTER_STDS = np.array([[0.5, 1.0], [1.0, 0.5], [0.7, 0.7]])
CLUSTER_SIZES = (300, 180, 120)


def three_clusters(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.normal(m, s, (n, 2)) for m, s, n in zip(CLUSTER_MEANS, CLUSTER_STDS, CLUSTER_SIZES)]
    )


def matched(means):
    """Indices of the fitted components nearest to each true cluster mean."""
    return np.linalg.norm(means[None, :, :] - CLUSTER_MEANS[:, None, :], axis=-1).argmin(axis=1)


def test_fit_mixture_recovers_three_well_separated_clusters():
    log_weights, means, log_vars = fit_mixture(three_clusters(seed=1000), 3, seed=0)
    assert log_weights.dtype == means.dtype == log_vars.dtype == np.float32
    order = matched(means)
    assert sorted(order) == [0, 1, 2]  # one component per cluster
    np.testing.assert_allclose(means[order], CLUSTER_MEANS, atol=0.15)
    np.testing.assert_allclose(np.exp(0.5 * log_vars[order]), CLUSTER_STDS, rtol=0.15)
    np.testing.assert_allclose(np.exp(log_weights[order]), np.array(CLUSTER_SIZES) / sum(CLUSTER_SIZES), atol=0.01)
    assert np.exp(log_weights).sum() == pytest.approx(1.0, abs=1e-5)


def test_fit_mixture_is_seeded():
    x = three_clusters(seed=3)
    for a, b in zip(fit_mixture(x, 3, seed=1), fit_mixture(x, 3, seed=1)):
        np.testing.assert_array_equal(a, b)


def test_fit_mixture_with_more_components_than_points_uses_one_per_point():
    log_weights, means, _ = fit_mixture(np.array([[0.0, 0.0], [5.0, 5.0]]), 10)
    assert len(log_weights) == len(means) == 2


def test_fit_mixture_recovers_the_clusters_from_every_initialisation():
    x = three_clusters(seed=0)
    for seed in range(20):
        _, means, _ = fit_mixture(x, 3, seed=seed)
        assert sorted(matched(means)) == [0, 1, 2], f"init seed {seed}: means {means.tolist()}"


def test_mixture_log_likelihood_is_the_mean_log_density_written_out():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 2))
    log_weights, means, log_vars = np.log([0.25, 0.75]), rng.normal(size=(2, 2)), rng.normal(size=(2, 2)) * 0.3
    density = sum(
        w * np.exp(-0.5 * (((x - m) ** 2) / np.exp(lv)).sum(1)) / np.sqrt((2 * np.pi) ** 2 * np.exp(lv).prod())
        for w, m, lv in zip(np.exp(log_weights), means, log_vars)
    )
    assert mixture_log_likelihood(x, log_weights, means, log_vars) == pytest.approx(np.log(density).mean(), rel=1e-9)


def test_select_mixture_keeps_the_size_the_held_out_points_like_best():
    # three clusters: one component is far too few, and 40 fitted to 600 points model their noise
    fit, scores = select_mixture(three_clusters(seed=5), three_clusters(seed=6), sizes=(1, 3, 40))
    assert list(scores) == [1, 3, 40]
    assert max(scores, key=scores.get) == 3 and len(fit[0]) == 3
    assert scores[1] < scores[3] - 1.0 and scores[40] < scores[3]
    assert sorted(matched(fit[1])) == [0, 1, 2]


# ------------------------------------------------------------------------ interpolate_latents


def test_interpolation_endpoints_are_the_inputs():
    rng = np.random.default_rng(6)
    z_a, z_b = rng.normal(size=8), rng.normal(size=8)
    path = interpolate_latents(z_a, z_b, 7)
    assert path.shape == (7, 8) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], z_a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(path[-1], z_b, rtol=1e-6, atol=1e-6)


def test_slerp_keeps_the_norm_of_equal_norm_endpoints_where_a_straight_line_would_not():
    rng = np.random.default_rng(7)
    z_a, z_b = rng.normal(size=16), rng.normal(size=16)
    z_b *= np.linalg.norm(z_a) / np.linalg.norm(z_b)
    norms = np.linalg.norm(interpolate_latents(z_a, z_b, 9), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(z_a), rtol=1e-5)
    assert np.linalg.norm((z_a + z_b) / 2) < 0.9 * np.linalg.norm(z_a)  # the midpoint of a line dips


def test_slerp_norms_stay_between_the_endpoint_norms_at_acute_angles():
    rng = np.random.default_rng(8)
    for _ in range(50):
        z_a, z_b = rng.normal(size=4) * rng.uniform(0.5, 3), rng.normal(size=4) * rng.uniform(0.5, 3)
        if np.dot(z_a, z_b) < 0:
            z_b = -z_b
        norms = np.linalg.norm(interpolate_latents(z_a, z_b, 11), axis=1)
        low, high = sorted([np.linalg.norm(z_a), np.linalg.norm(z_b)])
        assert np.all(norms >= low * (1 - 1e-5)) and np.all(norms <= high * (1 + 1e-5))


def test_slerp_of_nearly_opposite_endpoints_of_different_norms_stays_between_their_norms():
    z_a, z_b = np.array([1.0, 0.0]), np.array([-2.0, 1e-3])
    norms = np.linalg.norm(interpolate_latents(z_a, z_b, 5), axis=1)
    assert np.all(norms >= 1.0 - 1e-5) and np.all(norms <= np.linalg.norm(z_b) + 1e-5), norms


def test_parallel_endpoints_fall_back_to_a_straight_line():
    z = np.array([1.0, 2.0, -1.0])
    path = interpolate_latents(z, 3 * z, 5)
    np.testing.assert_allclose(path, np.linspace(1, 3, 5)[:, None] * z, rtol=1e-6)


# ------------------------------------------------------------------------------ contact_sheet


def test_contact_sheet_places_tiles_row_by_row_with_white_padding():
    s, padding = 4, 2
    tiles = np.stack([np.full((s, s, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = contact_sheet(tiles, columns=3, padding=padding)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * (s + padding) + padding, 3 * (s + padding) + padding, 1)
    covered = np.zeros(sheet.shape[:2], bool)
    for i in range(5):
        row, col = divmod(i, 3)
        y, x = padding + row * (s + padding), padding + col * (s + padding)
        assert np.all(sheet[y : y + s, x : x + s] == 10 * (i + 1)), f"tile {i}"
        covered[y : y + s, x : x + s] = True
    assert np.all(sheet[~covered] == 255)  # padding and the empty sixth slot


def test_contact_sheet_defaults_to_a_near_square_grid_and_keeps_colour():
    tiles = np.zeros((10, 3, 3, 3), np.uint8)
    tiles[:, :, :, 0] = 200  # red tiles
    sheet = contact_sheet(tiles, padding=1)
    # ceil(sqrt(10)) = 4 columns, so 3 rows
    assert sheet.shape == (3 * 4 + 1, 4 * 4 + 1, 3)
    np.testing.assert_array_equal(sheet[1:4, 1:4], tiles[0])
    np.testing.assert_array_equal(sheet[9:12, 5:8], tiles[9])  # row 2, column 1
