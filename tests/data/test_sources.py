"""Loaders: the real files in SAMX_DATA_DIR, and small files in the official formats."""

import gzip
import io
import os
import pathlib
import tarfile

import numpy as np
import pytest
from PIL import Image

import samx.data
from samx.data import _image_folder, _sources

DATA_DIR = os.environ.get("SAMX_DATA_DIR")
needs_real_data = pytest.mark.skipif(
    not DATA_DIR or not pathlib.Path(DATA_DIR, "mnist").is_dir(),
    reason="set SAMX_DATA_DIR to a folder with mnist/, fashion-mnist/ and cifar10-jpeg.tar.gz")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("samx-cache")


def official_sizes(monkeypatch, name, train, test):
  """Lets the small files of a test pass for the official ``name`` (every load checks its size)."""
  classes = _sources.OFFICIAL_SIZES[name][1]
  monkeypatch.setitem(_sources.OFFICIAL_SIZES, name, ({"train": train, "test": test}, classes))


@needs_real_data
def test_mnist_train_matches_the_published_statistics():
  train = samx.data.load("mnist", "train")
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert train.labels.dtype == np.int32
  assert train.class_counts().tolist() == MNIST_TRAIN_COUNTS
  assert float(np.mean(train.images / 255.0)) == pytest.approx(0.1307, abs=5e-5)
  test = samx.data.load("mnist", "test")
  assert test.images.shape == (10000, 28, 28, 1)
  assert test.class_counts().sum() == 10000


@needs_real_data
def test_fashion_mnist_is_balanced():
  for split, per_class in (("train", 6000), ("test", 1000)):
    dataset = samx.data.load("fashion-mnist", split)
    assert dataset.images.shape[1:] == (28, 28, 1)
    assert dataset.class_counts().tolist() == [per_class] * 10
    assert dataset.class_names[9] == "Ankle boot"


@needs_real_data
def test_cifar10_jpeg_reencoding_loads_and_caches(cache_dir, monkeypatch):
  test = samx.data.load("cifar10", "test", cache_dir=cache_dir)
  assert test.name == "CIFAR-10 (JPEG re-encoding)"
  assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
  assert test.class_counts().tolist() == [1000] * 10
  assert test.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")
  monkeypatch.setattr(_image_folder, "_decode", lambda *a: pytest.fail("decoded again"))
  again = samx.data.load("cifar10", "test", cache_dir=cache_dir)
  np.testing.assert_array_equal(again.images, test.images)


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  data = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trips(tmp_path, monkeypatch, compress):
  official_sizes(monkeypatch, "mnist", 60000, 7)
  images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
  labels = np.arange(7, dtype=np.uint8) % 10
  folder = tmp_path / "mnist"
  folder.mkdir()
  suffix = ".gz" if compress else ""
  _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress)
  _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
  dataset = samx.data.load("mnist", "test", data_dir=tmp_path)
  np.testing.assert_array_equal(dataset.images[..., 0], images)
  np.testing.assert_array_equal(dataset.labels, labels)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda raw: raw[:-3], "corrupt IDX file"),
    (lambda raw: b"\x08\x00" + raw[2:], "not an IDX file"),
    (lambda raw: gzip.compress(raw)[:-10], "corrupt gzip"),
])
def test_corrupt_idx_files_are_named(tmp_path, mutate, message):
  path = tmp_path / "x-idx1-ubyte"
  _write_idx(path, np.arange(10, dtype=np.uint8), compress=False)
  path.write_bytes(mutate(path.read_bytes()))
  with pytest.raises(ValueError, match=message):
    samx.data.read_idx(path)


def _cifar_records(images, *label_columns):
  pixels = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # planes R, G, B, row-major
  return np.concatenate([np.stack(label_columns, 1).astype(np.uint8), pixels], 1).tobytes()


def _tar(folder, archive):
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  return archive


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_binary_reader(tmp_path, monkeypatch, as_archive):
  official_sizes(monkeypatch, "cifar10", 15, 3)
  rng = np.random.default_rng(1)
  folder = tmp_path / "src" / "cifar-10-batches-bin"
  folder.mkdir(parents=True)
  names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
  (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
  expected = {"train": [], "test": []}
  for file_name, split in [(f"data_batch_{i}.bin", "train") for i in range(1, 6)] + [
      ("test_batch.bin", "test")]:
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=3)
    (folder / file_name).write_bytes(_cifar_records(images, labels))
    expected[split].append((images, labels))
  root = tmp_path / "src"
  if as_archive:
    root = tmp_path / "archive"
    root.mkdir()
    _tar(folder, root / "cifar-10-binary.tar.gz")
  for split in ("train", "test"):
    dataset = samx.data.load("cifar10", split, data_dir=root)
    assert dataset.name == "CIFAR-10" and dataset.class_names == tuple(names)
    np.testing.assert_array_equal(dataset.images, np.concatenate([e[0] for e in expected[split]]))
    np.testing.assert_array_equal(dataset.labels, np.concatenate([e[1] for e in expected[split]]))


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar100_binary_reader_keeps_coarse_labels(tmp_path, monkeypatch, as_archive):
  official_sizes(monkeypatch, "cifar100", 1, 4)
  rng = np.random.default_rng(2)
  folder = tmp_path / "src" / "cifar-100-binary"
  folder.mkdir(parents=True)
  (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
  (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
  images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
  coarse, fine = rng.integers(0, 20, size=4), rng.integers(0, 100, size=4)
  (folder / "test.bin").write_bytes(_cifar_records(images, coarse, fine))
  (folder / "train.bin").write_bytes(_cifar_records(images[:1], coarse[:1], fine[:1]))
  root = tmp_path / "src"
  if as_archive:
    root = tmp_path / "archive"
    root.mkdir()
    _tar(folder, root / "cifar-100-binary.tar.gz")
  dataset = samx.data.load("cifar100", "test", data_dir=root)
  np.testing.assert_array_equal(dataset.images, images)
  np.testing.assert_array_equal(dataset.labels, fine)
  np.testing.assert_array_equal(dataset.metadata["coarse_labels"], coarse)
  assert dataset.num_classes == 100 and dataset.metadata["coarse_names"][3] == "coarse3"


def test_truncated_cifar_binary_is_corrupt(tmp_path):
  folder = tmp_path / "cifar-100-binary"
  folder.mkdir()
  (folder / "test.bin").write_bytes(bytes(3074 + 100))
  (folder / "fine_label_names.txt").write_text("a")
  (folder / "coarse_label_names.txt").write_text("b")
  with pytest.raises(ValueError, match="corrupt CIFAR binary file"):
    samx.data.load("cifar100", "test", data_dir=tmp_path)


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_sorts_classes_and_decodes_losslessly(tmp_path, as_archive):
  rng = np.random.default_rng(3)
  root = tmp_path / "shapes"
  expected = {}
  for class_name in ("zebra", "ant", "moose"):
    (root / "train" / class_name).mkdir(parents=True)
    for index in range(2):
      image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
      (root / "train" / class_name / f"{index}.png").write_bytes(_png(image))
      expected[(class_name, index)] = image
  source = _tar(root, tmp_path / "shapes.tar.gz") if as_archive else root
  dataset = samx.data.load(f"folder:{source}", "train", cache_dir=tmp_path / "cache")
  assert dataset.class_names == ("ant", "moose", "zebra")
  assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
  np.testing.assert_array_equal(dataset.images[4], expected[("zebra", 0)])


def test_corrupt_image_is_named(tmp_path):
  (tmp_path / "data" / "train" / "a").mkdir(parents=True)
  (tmp_path / "data" / "train" / "a" / "0.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(ValueError, match=r"0\.jpg: corrupt image"):
    samx.data.load(f"folder:{tmp_path / 'data'}", "train", cache_dir=tmp_path / "cache")


def test_corrupt_archive_is_named(tmp_path):
  (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b garbage")
  with pytest.raises(ValueError, match="corrupt or unreadable archive"):
    samx.data.load("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_unknown_dataset_and_split_list_the_accepted_values():
  with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; known: cifar10, cifar100"):
    samx.data.load("imagenet")
  with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\)"):
    samx.data.load("mnist", "validation")


def test_missing_files_say_where_they_were_looked_for(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    samx.data.load("mnist", data_dir=tmp_path)
  message = str(error.value)
  assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
  assert "SAMX_DATA_DIR" in message and "tfds:mnist" in message


@pytest.mark.slow
@needs_real_data
def test_cifar10_jpeg_train_split(cache_dir):
  train = samx.data.load("cifar10", "train", cache_dir=cache_dir)
  assert train.images.shape == (50000, 32, 32, 3)
  assert train.class_counts().tolist() == [5000] * 10


def write_idx_pair(folder, prefix, images, labels):
  _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, True)
  _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, True)


def test_fetch_copies_and_checks_the_idx_files(tmp_path, monkeypatch):
  official_sizes(monkeypatch, "mnist", 5, 3)
  source = tmp_path / "mirror"
  source.mkdir()
  rng = np.random.default_rng(0)
  write_idx_pair(source, "train", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, 5, dtype=np.uint8))
  write_idx_pair(source, "t10k", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, 3, dtype=np.uint8))
  folder = samx.data.fetch("mnist", tmp_path / "data", base_url=source.as_uri())
  assert folder == tmp_path / "data" / "mnist"
  assert len(samx.data.load("mnist", "test", data_dir=tmp_path / "data")) == 3
  (source / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
  (folder / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="download of .* is corrupt"):
    samx.data.fetch("mnist", tmp_path / "data", base_url=source.as_uri())
  assert not (folder / "train-images-idx3-ubyte.gz").exists()
  assert not list(folder.glob("tmp*"))
  with pytest.raises(ValueError, match="name must be one of"):
    samx.data.fetch("cifar10", tmp_path / "data")
