"""Dominoes (on the real files) and the signal/noise-patch data."""

import hashlib

import numpy as np
import pytest
from test_sources import needs_real_data

import samx.data
from samx.data import synthetic
from samx.data.dominoes import dominoes, holdout, num_classes

FIVE = (0, 1, 2, 3, 4)  # Springer et al.'s 5-class FMNIST-MNIST: digits 0-4, FMNIST classes 0-4


def image_hashes(images):
  """One digest per image, to compare images across arrays by their bytes."""
  return [hashlib.sha1(image.tobytes()).digest() for image in images]


def source_index(name, split):
  """Digest -> label of every image of a source split (the official files have no duplicates)."""
  source = samx.data.load(name, split)
  return dict(zip(image_hashes(source.images), source.labels.tolist(), strict=True)), source


def shown_source_classes(data, index, half):
  """The source class of each example's top (``half=0``) or bottom (``half=1``) image."""
  height = data.images.shape[1] // 2
  part = data.images[:, half * height:(half + 1) * height]
  return np.array([index[h] for h in image_hashes(part)])


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


@needs_real_data
def test_five_class_dominoes_show_each_labels_classes():
  data = dominoes("fmnist_mnist", "test", seed=0, easy_classes=FIVE, hard_classes=FIVE)
  assert data.images.shape == (5000, 56, 28, 1) and data.images.dtype == np.uint8
  assert data.num_classes == 5 and data.class_names[2] == "2|Pullover"
  assert set(np.unique(data.labels).tolist()) == set(range(5))
  assert np.all(np.abs(np.bincount(data.labels) / 5000 - 0.2) < 0.03)
  np.testing.assert_array_equal(data.metadata["easy_labels"], data.labels)
  np.testing.assert_array_equal(data.metadata["hard_labels"], data.labels)
  # Each half is an image of its source's test split, of the class its label stands for.
  fmnist, _ = source_index("fashion_mnist", "test")
  mnist, _ = source_index("mnist", "test")
  expected = np.asarray(FIVE)[data.labels]
  np.testing.assert_array_equal(shown_source_classes(data, fmnist, 1), expected)
  np.testing.assert_array_equal(shown_source_classes(data, mnist, 0), expected)


@needs_real_data
def test_five_class_correlations_set_the_share_of_matches():
  shuffled = (4, 2, 0, 1, 3)  # class ids need not be in order: label y shows hard_classes[y]
  data = dominoes("fmnist_mnist", "test", seed=3, easy_classes=FIVE, hard_classes=shuffled,
                  easy_correlation=0.2, hard_correlation=0.6)
  labels, easy, hard = data.labels, data.metadata["easy_labels"], data.metadata["hard_labels"]
  fmnist, _ = source_index("fashion_mnist", "test")
  np.testing.assert_array_equal(shown_source_classes(data, fmnist, 1), np.asarray(shuffled)[hard])
  # Correlation 1/k: the easy part's class is independent of the label.
  for y in range(5):
    frequencies = np.bincount(easy[labels == y], minlength=5) / np.sum(labels == y)
    assert np.all(np.abs(frequencies - 0.2) < 0.06), (y, frequencies)
  # Correlation 0.6: 60% matches, the rest spread evenly over the four other classes.
  assert abs(np.mean(hard == labels) - 0.6) < 0.03
  for y in range(5):
    missed = hard[(labels == y) & (hard != labels)]
    frequencies = np.bincount(missed, minlength=5) / len(missed)
    assert frequencies[y] == 0 and np.all(np.abs(np.delete(frequencies, y) - 0.25) < 0.08)


@needs_real_data
def test_validation_is_held_out_of_the_train_split_by_class():
  fmnist, hard_source = source_index("fashion_mnist", "train")
  mnist, easy_source = source_index("mnist", "train")
  train_part, validation_part = holdout(hard_source.labels, FIVE, 0.1, seed=0)
  chosen = np.isin(hard_source.labels, FIVE)
  assert not np.any(train_part & validation_part)
  np.testing.assert_array_equal(train_part | validation_part, chosen)
  assert np.bincount(hard_source.labels[validation_part]).tolist() == [600] * 5
  train_hashes = set(image_hashes(hard_source.images[train_part]))
  validation_hashes = set(image_hashes(hard_source.images[validation_part]))
  assert not train_hashes & validation_hashes
  assert train_hashes | validation_hashes == set(image_hashes(hard_source.images[chosen]))
  easy_validation = holdout(easy_source.labels, FIVE, 0.1, seed=0)[1]
  easy_validation_hashes = set(image_hashes(easy_source.images[easy_validation]))

  common = {"easy_classes": FIVE, "hard_classes": FIVE, "validation_fraction": 0.1}
  train = dominoes("fmnist_mnist", "train", seed=0, **common)
  assert len(train) == 27000 and train.metadata["validation_fraction"] == 0.1
  # Every seed and correlation draws validation images from the same held-out part only, and
  # training images never from it.
  for seed, correlation in ((0, 1.0), (5, 0.6)):
    validation = dominoes("fmnist_mnist", "validation", seed=seed, hard_correlation=correlation,
                          easy_correlation=correlation, **common)
    assert len(validation) == 3000 and validation.split == "validation"
    hard_halves = image_hashes(validation.images[:, 28:])
    assert set(hard_halves) <= validation_hashes
    assert set(image_hashes(validation.images[:, :28])) <= easy_validation_hashes
    classes = shown_source_classes(validation, fmnist, 1)
    np.testing.assert_array_equal(classes, validation.metadata["hard_labels"])
    np.testing.assert_array_equal(shown_source_classes(validation, mnist, 0),
                                  validation.metadata["easy_labels"])
  assert set(image_hashes(train.images[:, 28:])) <= train_hashes
  assert not set(image_hashes(train.images[:, :28])) & easy_validation_hashes
  # Another validation_seed holds out other images, as many.
  other = holdout(hard_source.labels, FIVE, 0.1, seed=1)[1]
  assert other.sum() == 3000 and np.any(other != validation_part)


@needs_real_data
def test_no_validation_fraction_leaves_the_dominoes_unchanged():
  for split in ("train", "test"):
    before = dominoes("fmnist_mnist", split, seed=4, easy_correlation=0.7, hard_correlation=0.9)
    after = dominoes("fmnist_mnist", split, seed=4, easy_correlation=0.7, hard_correlation=0.9,
                     validation_fraction=0.0, validation_seed=12)
    for key in ("easy_labels", "hard_labels"):
      np.testing.assert_array_equal(after.metadata[key], before.metadata[key])
    np.testing.assert_array_equal(after.images, before.images)
    np.testing.assert_array_equal(after.labels, before.labels)
  # The test split ignores the fraction.
  test = dominoes("fmnist_mnist", "test", seed=4, easy_correlation=0.7, hard_correlation=0.9,
                  validation_fraction=0.3)
  np.testing.assert_array_equal(test.images, before.images)


def test_dominoes_check_their_classes_and_validation_arguments():
  assert num_classes("fmnist_mnist") == 2
  assert num_classes("fmnist_mnist", easy_classes=FIVE, hard_classes=FIVE) == 5
  with pytest.raises(ValueError, match="same length"):
    dominoes("fmnist_mnist", easy_classes=FIVE, hard_classes=(0, 1))
  with pytest.raises(ValueError, match="same length"):
    num_classes("fmnist_mnist", easy_classes=(0, 1, 2))
  with pytest.raises(ValueError, match="hard_classes must be at least two different"):
    dominoes("fmnist_mnist", hard_classes=(3, 3))
  with pytest.raises(ValueError, match="easy_classes must be at least two different"):
    dominoes("fmnist_mnist", easy_classes=(1,), hard_classes=(1,))
  for fraction in (-0.1, 1.0):
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
      dominoes("fmnist_mnist", validation_fraction=fraction)
  with pytest.raises(ValueError, match="validation_fraction > 0"):
    dominoes("fmnist_mnist", "validation")
  with pytest.raises(ValueError, match="split must be one of"):
    dominoes("fmnist_mnist", "val", validation_fraction=0.1)
  with pytest.raises(ValueError, match="validation_seed"):
    dominoes("fmnist_mnist", validation_fraction=0.1, validation_seed=-1)


def test_holdout_needs_both_parts_of_each_class():
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
  train_part, validation_part = holdout(labels, (0, 1), 0.5, seed=0)
  assert validation_part.sum() == 4 and not (train_part | validation_part)[7]
  assert np.bincount(labels[validation_part]).tolist() == [2, 2]  # round(1.5) == 2
  with pytest.raises(ValueError, match="validation_fraction=0.01 holds out 0 of the 3"):
    holdout(labels, (0, 1), 0.01, seed=0)


@needs_real_data
def test_classes_outside_the_source_are_named():
  with pytest.raises(ValueError, match=r"hard_classes must be classes of .* \(0 to 9\)"):
    dominoes("fmnist_mnist", "test", easy_classes=(0, 1), hard_classes=(0, 10))


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


def test_two_features_blocks_show_their_classes_with_the_asked_correlations():
  from samx.data.synthetic import two_features

  data = two_features(20_000, seed=3, easy_correlation=0.5, hard_correlation=0.9)
  assert data.inputs.shape == (20_000, 21) and data.easy_dim == 1
  assert abs(np.mean(data.easy_labels == data.labels) - 0.5) < 0.02
  assert abs(np.mean(data.hard_labels == data.labels) - 0.9) < 0.01
  # The easy block is separable (margin 2, noise 0.1); the hard block's first coordinate has
  # margin 1 under unit noise, Bayes accuracy Phi(1) = 0.841 for the class it shows.
  assert np.all((data.inputs[:, 0] > 0) == (data.easy_labels == 1))
  assert abs(np.mean((data.inputs[:, 1] > 0) == (data.hard_labels == 1)) - 0.841) < 0.01
  np.testing.assert_allclose(data.inputs[:, 2:].std(), 1.0, atol=0.01)
  assert np.array_equal(two_features(50, seed=3).inputs, two_features(50, seed=3).inputs)
  with pytest.raises(ValueError, match="hard_correlation"):
    two_features(5, seed=0, hard_correlation=1.5)
