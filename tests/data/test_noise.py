"""Label-noise models: exact rates, right masks, determinism, realised transition matrices."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samx.data import noise

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)
label_arrays = st.integers(2, 12).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.integers(0, k - 1), min_size=0, max_size=300).map(
        lambda values: np.array(values, np.int64))))
rates = st.floats(0.0, 0.99, allow_nan=False)


@PROPERTY
@given(problem=label_arrays, rate=rates, seed=st.integers(0, 2**31))
def test_symmetric_flips_exactly_the_rate_to_other_classes(problem, rate, seed):
  num_classes, clean = problem
  noisy = noise.symmetric(clean, rate, num_classes, seed=seed)
  assert noisy.labels.dtype == np.int32 and noisy.noisy_mask.dtype == bool
  assert int(noisy.noisy_mask.sum()) == round(rate * len(clean))
  np.testing.assert_array_equal(noisy.noisy_mask, noisy.labels != clean)
  assert noisy.labels.min(initial=0) >= 0 and noisy.labels.max(initial=0) < num_classes
  again = noise.symmetric(clean, rate, num_classes, seed=seed)
  np.testing.assert_array_equal(again.labels, noisy.labels)
  _check_transition_matrix(noisy, clean, num_classes)


@PROPERTY
@given(problem=label_arrays, rate=rates, seed=st.integers(0, 2**31))
def test_next_class_pair_flip_is_exact_per_class(problem, rate, seed):
  num_classes, clean = problem
  noisy = noise.asymmetric(clean, rate, num_classes, seed=seed)
  for c in range(num_classes):
    members = clean == c
    flipped = noisy.noisy_mask & members
    assert int(flipped.sum()) == round(rate * members.sum())
    assert np.all(noisy.labels[flipped] == (c + 1) % num_classes)
  _check_transition_matrix(noisy, clean, num_classes)


def _check_transition_matrix(noisy, clean, num_classes):
  matrix = noisy.transition_matrix
  assert matrix.shape == (num_classes, num_classes)
  present = np.bincount(clean, minlength=num_classes) > 0
  np.testing.assert_allclose(matrix.sum(1)[present], 1.0)
  np.testing.assert_array_equal(matrix.sum(1)[~present], 0.0)
  for c in np.flatnonzero(present):
    assert matrix[c, c] == pytest.approx(1.0 - noisy.noisy_mask[clean == c].mean())


def test_cifar10_map_moves_only_its_classes():
  clean = np.repeat(np.arange(10), 50)
  noisy = noise.asymmetric(clean, 0.4, 10, seed=3, mapping="cifar10")
  expected = np.eye(10)
  for source, target in {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}.items():
    expected[source, source], expected[source, target] = 0.6, 0.4
  np.testing.assert_allclose(noisy.transition_matrix, expected)
  assert noisy.noise_rate == pytest.approx(0.4 * 5 / 10)


def test_symmetric_targets_are_uniform_over_the_other_classes():
  clean = np.zeros(20000, np.int32)
  noisy = noise.symmetric(clean, 0.9, 5, seed=0)
  counts = np.bincount(noisy.labels[noisy.noisy_mask], minlength=5)
  assert counts[0] == 0
  # 18000 flips over 4 classes: each within 5 standard deviations of 4500.
  assert np.all(np.abs(counts[1:] - 4500) < 5 * np.sqrt(18000 * 0.25 * 0.75))


def test_different_seeds_give_different_noise():
  clean = np.arange(1000) % 10
  a = noise.symmetric(clean, 0.5, 10, seed=0).labels
  b = noise.symmetric(clean, 0.5, 10, seed=1).labels
  assert np.mean(a != b) > 0.3


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.2", True])
def test_rate_outside_unit_interval_is_an_error(rate):
  with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\)"):
    noise.symmetric(np.zeros(4, int), rate, 10, seed=0)


def test_bad_labels_and_mappings_are_errors():
  with pytest.raises(ValueError, match="labels must lie in"):
    noise.symmetric(np.array([0, 10]), 0.1, 10, seed=0)
  with pytest.raises(ValueError, match="num_classes"):
    noise.symmetric(np.array([0]), 0.1, 1, seed=0)
  with pytest.raises(ValueError, match="mapping='cifar10' needs num_classes=10"):
    noise.asymmetric(np.array([0]), 0.1, 5, seed=0, mapping="cifar10")
  with pytest.raises(ValueError, match="to a different one"):
    noise.asymmetric(np.array([0]), 0.1, 5, seed=0, mapping={1: 1})
  with pytest.raises(ValueError, match="mapping must be"):
    noise.asymmetric(np.array([0]), 0.1, 5, seed=0, mapping="random")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".txt", ".csv"])
def test_from_file_reads_one_label_per_example(tmp_path, suffix):
  clean = np.array([0, 1, 2, 3, 4, 0])
  given_labels = np.array([0, 2, 2, 3, 1, 4])
  path = tmp_path / f"labels{suffix}"
  if suffix == ".npy":
    np.save(path, given_labels)
  elif suffix == ".npz":
    np.savez(path, worse_label=given_labels)
  else:
    path.write_text("label\n" + "\n".join(str(v) for v in given_labels) + "\n")
  noisy = noise.from_file(clean, path, 5)
  np.testing.assert_array_equal(noisy.labels, given_labels)
  assert noisy.noisy_mask.tolist() == [False, True, False, False, True, True]
  assert noisy.transition_matrix[1, 2] == 1.0


def test_from_file_errors(tmp_path):
  clean = np.array([0, 1, 2])
  short = tmp_path / "short.txt"
  short.write_text("0\n1\n")
  with pytest.raises(ValueError, match="expected 3 integer labels"):
    noise.from_file(clean, short, 3)
  high = tmp_path / "high.txt"
  high.write_text("0\n1\n7\n")
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    noise.from_file(clean, high, 3)
  pickled = tmp_path / "objects.npy"
  np.save(pickled, np.array([{"a": 1}, 2, 3], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="not a readable file of integer labels"):
    noise.from_file(clean, pickled, 3)
  with pytest.raises(FileNotFoundError):
    noise.from_file(clean, tmp_path / "missing.npy", 3)


def test_instance_dependent_rate_mask_and_determinism():
  rng = np.random.default_rng(0)
  features = rng.uniform(size=(6000, 48))
  clean = rng.integers(0, 10, size=6000)
  noisy = noise.instance_dependent(clean, 0.35, 10, features=features, seed=4)
  # Mean of truncated N(0.35, 0.1^2) is ~0.35; 6000 draws leave ~0.01 of sampling error.
  assert noisy.noise_rate == pytest.approx(0.35, abs=0.03)
  np.testing.assert_array_equal(noisy.noisy_mask, noisy.labels != clean)
  again = noise.instance_dependent(clean, 0.35, 10, features=features, seed=4)
  np.testing.assert_array_equal(again.labels, noisy.labels)
  assert noise.instance_dependent(clean, 0.0, 10, features=features, seed=4).noise_rate == 0.0


def test_instance_dependent_noise_follows_the_instance():
  # 400 copies of one input with one label flip towards the same few classes; a second input
  # of the same class prefers other ones. Class-conditional noise could not tell them apart.
  rng = np.random.default_rng(1)
  a, b = rng.uniform(size=(2, 1, 64)) * 4
  features = np.concatenate([np.repeat(a, 400, 0), np.repeat(b, 400, 0)])
  clean = np.zeros(800, np.int64)
  noisy = noise.instance_dependent(clean, 0.5, 10, features=features, seed=0)
  targets_a = np.bincount(noisy.labels[:400][noisy.noisy_mask[:400]], minlength=10)
  targets_b = np.bincount(noisy.labels[400:][noisy.noisy_mask[400:]], minlength=10)
  assert targets_a[0] == targets_b[0] == 0
  assert targets_a.max() > 0.5 * targets_a.sum()  # far from uniform over 9 classes
  assert np.argmax(targets_a) != np.argmax(targets_b) or (
      abs(targets_a / targets_a.sum() - targets_b / targets_b.sum()).sum() > 0.5)


def test_instance_dependent_checks_its_arguments():
  with pytest.raises(ValueError, match="one row per label"):
    noise.instance_dependent(np.zeros(3, int), 0.2, 10, features=np.zeros((4, 2)), seed=0)
  with pytest.raises(ValueError, match="rate must be"):
    noise.instance_dependent(np.zeros(3, int), 1.2, 10, features=np.zeros((3, 2)), seed=0)
  with pytest.raises(ValueError, match="rate_std"):
    noise.instance_dependent(np.zeros(3, int), 0.2, 10, features=np.zeros((3, 2)), seed=0,
                             rate_std=0.0)
