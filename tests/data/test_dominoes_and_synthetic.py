"""Dominoes (on the real files) and the signal/noise-patch data."""

import numpy as np
import pytest
from test_sources import needs_real_data

from samx.data import synthetic
from samx.data.dominoes import dominoes


@needs_real_data
def test_fmnist_mnist_dominoes_stack_the_parts_and_keep_their_labels():
  data = dominoes("fmnist_mnist", "test", seed=0)
  assert data.images.shape == (2000, 56, 28, 1) and data.images.dtype == np.uint8
  np.testing.assert_array_equal(data.metadata["easy_labels"], data.labels)
  np.testing.assert_array_equal(data.metadata["hard_labels"], data.labels)
  assert 900 < int(data.labels.sum()) < 1100
  # The top half is an MNIST digit: mostly black background, unlike a T-shirt or a dress.
  assert data.images[:, :28].mean() < data.images[:, 28:].mean()
  again = dominoes("fmnist_mnist", "test", seed=0)
  np.testing.assert_array_equal(again.images, data.images)


@needs_real_data
def test_correlation_knobs_decouple_the_parts(tmp_path):
  data = dominoes("fmnist_mnist", "test", seed=1, easy_correlation=0.5, hard_correlation=0.9)
  easy_agree = np.mean(data.metadata["easy_labels"] == data.labels)
  hard_agree = np.mean(data.metadata["hard_labels"] == data.labels)
  assert abs(easy_agree - 0.5) < 0.05 and abs(hard_agree - 0.9) < 0.03


@needs_real_data
def test_cifar_mnist_dominoes_have_rgb_digits_on_top(tmp_path):
  data = dominoes("cifar_mnist", "test", cache_dir=tmp_path)
  assert data.images.shape == (2000, 64, 32, 3)
  top = data.images[:, :32].astype(int)
  assert np.all(top[..., 0] == top[..., 1]) and np.all(top[:, :2] == 0)
  assert data.class_names == ("0|automobile", "1|truck")


def test_dominoes_check_their_arguments():
  with pytest.raises(ValueError, match="kind must be one of"):
    dominoes("svhn_mnist")
  with pytest.raises(ValueError, match="easy_correlation must be in"):
    dominoes(easy_correlation=1.5)


def test_signal_noise_patches_follow_the_model():
  data = synthetic.signal_noise_patches(4000, 50, signal_norm=3.0, noise_std=0.7,
                                        flip_probability=0.1, seed=0)
  rows = np.arange(4000)
  signal = data.inputs[rows, data.signal_patch]
  noise = data.inputs[rows, 1 - data.signal_patch]
  signs = 2.0 * data.clean_labels - 1.0
  np.testing.assert_allclose(signal, signs[:, None] * data.mu[None], atol=1e-6)
  assert np.linalg.norm(data.mu) == pytest.approx(3.0, rel=1e-6)
  np.testing.assert_allclose(noise @ data.mu, 0.0, atol=1e-3)  # orthogonal to the signal
  # Per-coordinate variance sigma_p^2 (d - 1) / d once the signal direction is removed.
  assert noise.var() == pytest.approx(0.49 * 49 / 50, rel=0.05)
  np.testing.assert_array_equal(data.noisy_mask, data.labels != data.clean_labels)
  assert data.noisy_mask.mean() == pytest.approx(0.1, abs=0.015)
  assert 0.45 < data.signal_patch.mean() < 0.55


def test_signal_noise_patches_share_mu_between_train_and_test():
  train = synthetic.signal_noise_patches(10, 8, signal_norm=1.0, noise_std=1.0, seed=0)
  test = synthetic.signal_noise_patches(10, 8, signal_norm=1.0, noise_std=1.0, seed=1,
                                        mu=train.mu)
  np.testing.assert_array_equal(test.mu, train.mu)
  with pytest.raises(ValueError, match="flip_probability"):
    synthetic.signal_noise_patches(10, 8, signal_norm=1.0, noise_std=1.0, seed=0,
                                   flip_probability=1.0)
  with pytest.raises(ValueError, match="d must be"):
    synthetic.signal_noise_patches(10, 1, signal_norm=1.0, noise_std=1.0, seed=0)
