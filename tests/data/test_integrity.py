"""Damaged, truncated, swapped or reordered files: each fails naming the file, or loads right."""

import bz2
import gzip
import io
import lzma
import os
import pathlib
import tarfile
import time
import zlib

import numpy as np
import pytest
from test_sources import DATA_DIR, _cifar_records, _png, _write_idx, needs_real_data, official_sizes

import samx.data
from samx.data import CorruptFileError, _file_tree, _image_folder
from samx.data._progress import Progress

REMEDY = "Delete it and download"
CIFAR10_JPEG = pathlib.Path(DATA_DIR or "/nonexistent", "cifar10-jpeg.tar.gz")
needs_cifar10_jpeg = pytest.mark.skipif(
    not CIFAR10_JPEG.is_file(), reason="set SAMX_DATA_DIR to a folder with cifar10-jpeg.tar.gz")
COMPRESSIONS = {"": lambda raw: raw, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def image_files(classes=None, per_class=2, seed=0):
  """``{path: png bytes}`` of a small ``shapes/<split>/<class>/<n>.png`` tree."""
  rng = np.random.default_rng(seed)
  classes = classes or {"train": ("ant", "bee", "cat"), "test": ("ant", "bee", "cat")}
  return {f"shapes/{split}/{name}/{index:03d}.png":
          _png(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
          for split, names in classes.items() for name in names for index in range(per_class)}


def write_folder(root, files):
  for path, data in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
  return root / "shapes"


def tar_bytes(files, order=None):
  """An uncompressed tar of ``files`` with its members in ``order`` (default: sorted)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
    for path in sorted(files) if order is None else order:
      info = tarfile.TarInfo(path)
      info.size, info.mtime = len(files[path]), 1_700_000_000
      archive.addfile(info, io.BytesIO(files[path]))
  return buffer.getvalue()


def member_offsets(raw_tar):
  with tarfile.open(fileobj=io.BytesIO(raw_tar)) as archive:
    return [member.offset for member in archive.getmembers()]


def load_folder(source, split, cache):
  return samx.data.load(f"folder:{source}", split, cache_dir=cache)


def assert_same(first, second):
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.labels, second.labels)
  assert first.class_names == second.class_names


def assert_refused(source, cache, match, split="train"):
  """Loading ``source`` fails naming it, says what to do, and caches nothing."""
  with pytest.raises(CorruptFileError, match=match) as error:
    load_folder(source, split, cache)
  assert str(source) in str(error.value) and REMEDY in str(error.value)
  assert not cache.exists() or not list(cache.iterdir())
  return error.value


# 1. An archive is read to its real end, or the load fails naming it.


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_archives_load_like_the_folder(tmp_path, compression):
  files = image_files()
  folder = write_folder(tmp_path, files)
  archive = tmp_path / f"shapes.tar{'.' if compression else ''}{compression}"
  archive.write_bytes(COMPRESSIONS[compression](tar_bytes(files)))
  for split in ("train", "test"):
    assert_same(load_folder(archive, split, tmp_path / "c1"),
                load_folder(folder, split, tmp_path / "c2"))


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_a_damaged_tar_header_is_not_taken_for_the_end(tmp_path, compression):
  raw = bytearray(tar_bytes(image_files(per_class=4)))
  offsets = member_offsets(bytes(raw))
  middle = offsets[len(offsets) // 2]
  raw[middle:middle + 16] = np.random.default_rng(0).integers(1, 256, 16, np.uint8).tobytes()
  with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as archive:
    assert len(archive.getmembers()) == len(offsets) // 2  # tarfile stops there, silently
  source = tmp_path / f"shapes.tar.{compression}"
  source.write_bytes(COMPRESSIONS[compression](bytes(raw)))
  error = assert_refused(source, tmp_path / "cache", "damaged tar header")
  assert f"byte {middle} " in str(error)


def _garble(raw, at, size=8, seed=0):
  raw = bytearray(raw)
  raw[at:at + size] = bytes(b ^ v for b, v in zip(raw[at:at + size], np.random.default_rng(
      seed).integers(1, 256, size), strict=True))
  return bytes(raw)


def _tar_end(raw_tar):
  """Where a tar's end-of-archive marker starts (after the last member's data)."""
  with tarfile.open(fileobj=io.BytesIO(raw_tar)) as archive:
    last = archive.getmembers()[-1]
  return last.offset_data + -(-last.size // 512) * 512


CORRUPTIONS = {
    # name: (how the .tar.gz bytes are damaged, from the tar and its .gz, what the error says)
    "truncated gzip": (lambda tar, gz: gz[:-40], "EOFError"),
    "gzip CRC": (lambda tar, gz: gz[:-8] + bytes(4) + gz[-4:], "CRC check failed"),
    "gzip length": (lambda tar, gz: gz[:-4] + bytes(4), "Incorrect length"),
    "garbage after the gzip stream": (lambda tar, gz: gz + b"junk", "BadGzipFile"),
    "no end-of-archive marker": (lambda tar, gz: gzip.compress(tar[:_tar_end(tar)]),
                                 "without the end-of-archive marker"),
    "data after the end-of-archive marker": (
        lambda tar, gz: gzip.compress(tar + b"\x01" + bytes(511)), "data after the end-of"),
    "tar cut inside a member": (lambda tar, gz: gzip.compress(tar[:_tar_end(tar) - 500]),
                                "unexpected end of data"),
    **{f"8 bytes garbled in the deflate stream ({seed})": (
        lambda tar, gz, seed=seed: _garble(gz, len(gz) // 3 + 97 * seed, seed=seed),
        "corrupt or unreadable archive") for seed in range(6)},
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_archive_fails_naming_it_and_is_not_cached(tmp_path, corruption):
  damage, message = CORRUPTIONS[corruption]
  tar = tar_bytes(image_files(per_class=6))
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(damage(tar, gzip.compress(tar)))
  assert_refused(source, tmp_path / "cache", message)


def test_a_gzip_stream_is_read_to_its_end_even_after_the_tar_end(tmp_path):
  # Everything tarfile needs precedes the damage: only reading to the end catches it.
  tar = tar_bytes(image_files()) + bytes(20 * 512)
  source = tmp_path / "shapes.tar.gz"
  gz = gzip.compress(tar)
  source.write_bytes(gz[:-8] + (zlib.crc32(tar) ^ 1).to_bytes(4, "little") + gz[-4:])
  assert_refused(source, tmp_path / "cache", "CRC check failed")


@needs_cifar10_jpeg
def test_the_reported_garbled_cifar10_archive_fails_and_is_not_cached(tmp_path):
  # The bug report: 16 bytes garbled at the middle of the file loaded as 20,509 training
  # images of 5 classes, and that split was cached.
  raw = bytearray(CIFAR10_JPEG.read_bytes())
  rng = np.random.default_rng(0)
  at = len(raw) // 2 + int(rng.integers(-64, 64))
  raw[at:at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
  source = tmp_path / "cifar10-jpeg.tar.gz"
  source.write_bytes(bytes(raw))
  with pytest.raises(CorruptFileError, match="damaged tar header") as error:
    samx.data.load("cifar10", "train", data_dir=tmp_path, cache_dir=tmp_path / "cache")
  assert str(source) in str(error.value) and REMEDY in str(error.value)
  assert not (tmp_path / "cache").exists()


def _cifar10_binary(folder, per_file):
  folder.mkdir(parents=True)
  (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
  images = np.zeros((per_file, 32, 32, 3), np.uint8)
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    (folder / name).write_bytes(_cifar_records(images, np.arange(per_file) % 10))


def test_known_datasets_are_checked_against_their_official_sizes(tmp_path):
  _cifar10_binary(tmp_path / "cifar-10-batches-bin", per_file=3)
  with pytest.raises(CorruptFileError, match=r"expected 50000 examples of 10 classes, found 15 "
                     r"of 10") as error:
    samx.data.load("cifar10", "train", data_dir=tmp_path)
  assert str(tmp_path / "cifar-10-batches-bin") in str(error.value)

  folder = tmp_path / "c100" / "cifar-100-binary"
  folder.mkdir(parents=True)
  (folder / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
  (folder / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
  (folder / "test.bin").write_bytes(_cifar_records(np.zeros((2, 32, 32, 3), np.uint8), [0, 1],
                                                   [0, 1]))
  with pytest.raises(CorruptFileError, match=r"cifar100 test split: expected 10000 examples of "
                     r"100 classes, found 2 of 100"):
    samx.data.load("cifar100", "test", data_dir=tmp_path / "c100")


def test_an_image_folder_cifar10_of_the_wrong_size_is_refused_and_not_cached(tmp_path,
                                                                            monkeypatch):
  names = tuple(f"class{i}" for i in range(10))
  files = image_files({"train": names, "test": names}, per_class=1)
  source = tmp_path / "cifar10-jpeg.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(files)))
  with pytest.raises(CorruptFileError, match=r"expected 10000 examples of 10 classes, found 10 "
                     "of 10") as error:
    samx.data.load("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
  assert str(source) in str(error.value)
  assert not list((tmp_path / "cache").glob("*"))
  official_sizes(monkeypatch, "cifar10", 10, 10)
  assert len(samx.data.load("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache"))
  # A cached split is checked too.
  official_sizes(monkeypatch, "cifar10", 10, 11)
  with pytest.raises(CorruptFileError, match="found 10 of 10"):
    samx.data.load("cifar10", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("as_archive", [False, True])
def test_train_and_test_must_have_the_same_classes(tmp_path, as_archive):
  files = image_files({"train": ("ant", "bee", "cat"), "test": ("ant", "bee", "dog")})
  source = write_folder(tmp_path, files)
  if as_archive:
    source = tmp_path / "shapes.tar.gz"
    source.write_bytes(gzip.compress(tar_bytes(files)))
  for split in ("train", "test"):
    with pytest.raises(ValueError, match=r"train and test splits have different classes: .*only "
                       r"in train: \['cat'\]; only in test: \['dog'\]") as error:
      load_folder(source, split, tmp_path / "cache")
    assert str(source) in str(error.value)


# 1. The cache: tied to its source, written atomically, never served damaged.


def test_the_cache_follows_a_replaced_archive_of_the_same_size_and_time(tmp_path):
  source = tmp_path / "shapes.tar"
  source.write_bytes(tar_bytes(image_files()))
  first = load_folder(source, "train", tmp_path / "cache")
  stat = source.stat()
  renamed = {path.replace("/ant/", "/eel/"): data for path, data in image_files().items()}
  replacement = tmp_path / "new.tar"
  replacement.write_bytes(tar_bytes(renamed))
  os.replace(replacement, source)
  os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert source.stat().st_size == stat.st_size
  second = load_folder(source, "train", tmp_path / "cache")
  assert first.class_names == ("ant", "bee", "cat") and second.class_names == ("bee", "cat", "eel")


def test_the_cache_follows_a_changed_file_deep_in_a_folder(tmp_path):
  folder = write_folder(tmp_path, image_files())
  first = load_folder(folder, "train", tmp_path / "cache")
  changed = tmp_path / "shapes/train/bee/000.png"
  folder_time = changed.parent.stat().st_mtime_ns
  changed.write_bytes(_png(np.full((4, 4, 3), 7, np.uint8)))
  os.utime(changed.parent, ns=(folder_time, folder_time))
  second = load_folder(folder, "train", tmp_path / "cache")
  assert not np.array_equal(first.images, second.images)
  np.testing.assert_array_equal(second.images[2], np.full((4, 4, 3), 7))


DAMAGES = {
    "truncated": lambda raw: raw[:len(raw) // 2],
    "a byte flipped": lambda raw: _garble(raw, len(raw) // 2, size=1),
    "empty": lambda raw: b"",
    "not a zip": lambda raw: b"garbage" * 100,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_entry_is_decoded_again(tmp_path, monkeypatch, damage):
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(image_files())))
  fresh = load_folder(source, "train", tmp_path / "cache")
  (entry,) = (tmp_path / "cache").iterdir()
  entry.write_bytes(DAMAGES[damage](entry.read_bytes()))
  with pytest.warns(UserWarning, match=r"damaged cache entry.*decoding its source again"):
    again = load_folder(source, "train", tmp_path / "cache")
  assert_same(again, fresh)
  monkeypatch.setattr(_image_folder, "_decode", lambda *a: pytest.fail("decoded again"))
  assert_same(load_folder(source, "train", tmp_path / "cache"), fresh)  # rebuilt


def test_a_cache_entry_of_the_wrong_arrays_is_decoded_again(tmp_path):
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(image_files())))
  fresh = load_folder(source, "train", tmp_path / "cache")
  (entry,) = (tmp_path / "cache").iterdir()
  np.savez(entry, images=fresh.images, labels=fresh.labels[:-1], class_names=np.array(["a"]))
  with pytest.warns(UserWarning, match="wrong type or shape"):
    assert_same(load_folder(source, "train", tmp_path / "cache"), fresh)


def test_the_cache_is_written_atomically(tmp_path, monkeypatch):
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(image_files())))

  def fail_midway(file, **arrays):
    file.write(b"PK\x03\x04 half an npz")
    raise OSError("disk full")

  monkeypatch.setattr(_image_folder.np, "savez", fail_midway)
  with pytest.warns(UserWarning, match="cannot write the cache .*disk full"):
    assert len(load_folder(source, "train", tmp_path / "cache")) == 6
  assert not list((tmp_path / "cache").iterdir())  # no entry, no partial file
  monkeypatch.undo()
  load_folder(source, "train", tmp_path / "cache")
  assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]


def test_a_source_that_changes_while_read_is_not_cached(tmp_path, monkeypatch):
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(image_files())))
  read_tree = _image_folder.read_tree

  def read_then_touch(*args, **kwargs):
    tree = read_tree(*args, **kwargs)
    os.utime(source, ns=(0, 0))
    return tree

  monkeypatch.setattr(_image_folder, "read_tree", read_then_touch)
  with pytest.raises(ValueError, match="changed while it was being read"):
    load_folder(source, "train", tmp_path / "cache")
  assert not list((tmp_path / "cache").glob("*"))


# 2. A corrupt IDX file: a samx error naming it, and what to do.


def _gzip_idx(array):
  return gzip.compress(bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes() +
                       array.tobytes())


IDX_CORRUPTIONS = {
    # name: (damage to the .gz bytes, the error gzip raises, what the message says)
    "garbled deflate data": (lambda gz: _garble(gz, len(gz) // 2), zlib.error,
                             "corrupt gzip stream"),
    "truncated gzip": (lambda gz: gz[:len(gz) // 2], EOFError, "corrupt gzip stream"),
    "bad gzip header": (lambda gz: gz[:2] + b"\x07" + gz[3:], gzip.BadGzipFile,
                        "Unknown compression method"),
    "CRC mismatch": (lambda gz: gz[:-8] + bytes(4) + gz[-4:], gzip.BadGzipFile,
                     "CRC check failed"),
    "header dims that do not match the data": (
        lambda gz: gzip.compress(gzip.decompress(gz)[:4] + (9).to_bytes(4, "big") +
                                 gzip.decompress(gz)[8:]), None, r"header says \(9, 28, 28\) "
        r"\(7056 bytes of data\) but the file holds 50176"),
}


@pytest.mark.parametrize("corruption", list(IDX_CORRUPTIONS))
def test_a_corrupt_idx_file_is_a_samx_error_naming_it(tmp_path, corruption):
  damage, cause, message = IDX_CORRUPTIONS[corruption]
  # Smooth images, as deflate compresses them: with back-references to garble.
  scale = np.random.default_rng(0).integers(1, 5, (64, 1, 1))
  images = (np.add.outer(np.arange(28), np.arange(28)) * scale % 200).astype(np.uint8)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(damage(_gzip_idx(images)))
  with pytest.raises(CorruptFileError, match=message) as error:
    samx.data.read_idx(path)
  assert str(path) in str(error.value) and REMEDY in str(error.value)
  assert cause is None or isinstance(error.value.__cause__, cause)


def _mnist_copy(tmp_path, replace=None):
  """``tmp_path/mnist`` with the real train files, ``replace`` mapping a name to new bytes."""
  folder = tmp_path / "mnist"
  folder.mkdir()
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
    data = (replace or {}).get(name) or pathlib.Path(DATA_DIR, "mnist", name).read_bytes()
    (folder / name).write_bytes(data)
  return folder


@needs_real_data
@pytest.mark.parametrize("seed", range(5))
def test_real_mnist_with_8_garbled_bytes_is_a_samx_error(tmp_path, seed):
  name = "train-images-idx3-ubyte.gz"
  raw = (_mnist_copy(tmp_path) / name).read_bytes()
  at = int(np.random.default_rng(seed).integers(1000, len(raw) - 1000))
  (tmp_path / "mnist" / name).write_bytes(_garble(raw, at, seed=seed))
  with pytest.raises(CorruptFileError, match="corrupt gzip stream") as error:
    samx.data.load("mnist", "train", data_dir=tmp_path)
  assert str(tmp_path / "mnist" / name) in str(error.value) and REMEDY in str(error.value)


@needs_real_data
@pytest.mark.parametrize(("stand_in", "found"), [
    ("t10k-images-idx3-ubyte.gz", r"found uint8 of shape \(10000, 28, 28\) \(magic number "
     r"00000803\)"),
    ("train-labels-idx1-ubyte.gz", r"found uint8 of shape \(60000,\) \(magic number 00000801\)"),
])
def test_real_idx_file_swapped_for_another_names_expected_and_found(tmp_path, stand_in, found):
  name = "train-images-idx3-ubyte.gz"
  _mnist_copy(tmp_path, {name: pathlib.Path(DATA_DIR, "mnist", stand_in).read_bytes()})
  with pytest.raises(CorruptFileError, match=r"expected uint8 of shape \(60000, 28, 28\) \(magic "
                     r"number 00000803\), " + found) as error:
    samx.data.load("mnist", "train", data_dir=tmp_path)
  assert str(tmp_path / "mnist" / name) in str(error.value)


def test_idx_files_swapped_for_each_other_name_expected_and_found(tmp_path, monkeypatch):
  official_sizes(monkeypatch, "mnist", 9, 7)
  rng = np.random.default_rng(0)
  folder = tmp_path / "mnist"
  folder.mkdir()
  _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 10, 9), True)  # labels
  _write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 9), True)
  _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (9, 28, 28)), True)
  _write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 7), True)
  with pytest.raises(CorruptFileError, match=r"train-images-idx3-ubyte.gz: not the IDX file "
                     r"expected: expected uint8 of shape \(9, 28, 28\) .*, found uint8 of shape "
                     r"\(9,\) \(magic number 00000801\)"):
    samx.data.load("mnist", "train", data_dir=tmp_path)
  with pytest.raises(CorruptFileError, match=r"t10k-images-idx3-ubyte.gz: .*expected uint8 of "
                     r"shape \(7, 28, 28\) .*found uint8 of shape \(9, 28, 28\)"):
    samx.data.load("mnist", "test", data_dir=tmp_path)
  _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (7, 28, 28)), True)
  _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(7, 12), True)
  with pytest.raises(CorruptFileError, match=r"t10k-labels-idx1-ubyte.gz: corrupt labels: up to "
                     r"12"):
    samx.data.load("mnist", "test", data_dir=tmp_path)


# 3. One sequential pass, whatever the order of the members.


def test_an_unsorted_archive_loads_like_the_sorted_one_in_one_pass(tmp_path, monkeypatch):
  names = ("ant", "bee", "cat", "dog")
  files = image_files({"train": names, "test": names}, per_class=50, seed=4)
  order = list(np.random.default_rng(5).permutation(sorted(files)))
  sorted_tar, shuffled_tar = tar_bytes(files), tar_bytes(files, order)
  assert member_offsets(shuffled_tar) and order != sorted(files)
  (tmp_path / "sorted.tar.gz").write_bytes(gzip.compress(sorted_tar))
  (tmp_path / "shuffled.tar.gz").write_bytes(gzip.compress(shuffled_tar))
  read = []
  original = _file_tree._ForwardReader.read
  monkeypatch.setattr(_file_tree._ForwardReader, "read",
                      lambda self, size=-1: read.append(original(self, size)) or read[-1])
  for split in ("train", "test"):
    read.clear()
    shuffled = load_folder(tmp_path / "shuffled.tar.gz", split, tmp_path / "cache")
    assert sum(map(len, read)) == len(shuffled_tar)  # each byte read once, none again
    assert_same(shuffled, load_folder(tmp_path / "sorted.tar.gz", split, tmp_path / "cache"))
    assert len(shuffled) == 200 and shuffled.class_counts().tolist() == [50] * 4


def test_reading_never_seeks_back():
  reader = _file_tree._ForwardReader(io.BytesIO(bytes(range(100))))
  assert reader.seek(10) == 10 and reader.read(5) == bytes(range(10, 15))
  with pytest.raises(io.UnsupportedOperation, match="cannot seek back"):
    reader.seek(3)


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_is_one_line_off_a_terminal_and_a_bar_on_one():
  log = io.StringIO()
  progress = Progress("decoding x", delay=0.0, stream=log)
  for stage in ("reading", "decoding"):
    progress.stage(stage, 100, "B")
    for done in range(1, 101):
      progress.update(done)
  progress.close()
  assert log.getvalue() == "samx: decoding x ...\n"
  terminal = _Terminal()
  progress = Progress("decoding x", delay=0.0, stream=terminal)
  progress.stage("decoding", 10, "image")
  for done in range(1, 11):
    progress.update(done)
  progress.close()
  assert "decoding: 100%" in terminal.getvalue() and "10/10" in terminal.getvalue()


def test_a_quick_load_says_nothing_and_a_slow_one_one_line(tmp_path, monkeypatch, capsys):
  source = tmp_path / "shapes.tar.gz"
  source.write_bytes(gzip.compress(tar_bytes(image_files())))
  load_folder(source, "train", tmp_path / "cache")
  assert capsys.readouterr().err == ""
  monkeypatch.setattr(_image_folder, "PROGRESS_DELAY_S", 0.0)
  load_folder(source, "test", tmp_path / "cache")
  assert capsys.readouterr().err == (f"samx: decoding the test split of {source} once, into the "
                                     f"cache in {tmp_path / 'cache'} ...\n")


@pytest.mark.slow
@needs_cifar10_jpeg
def test_the_real_cifar10_test_split_repacked_unsorted_loads_identically(tmp_path):
  # Measures (prints, does not assert) the times: one pass whatever the order.
  files = {}
  with tarfile.open(CIFAR10_JPEG) as archive:
    for member in archive:
      if member.isfile() and "/test/" in member.name:
        files[member.name] = archive.extractfile(member).read()
  order = list(np.random.default_rng(0).permutation(sorted(files)))
  loaded = {}
  for name, member_order in (("sorted", None), ("unsorted", order)):
    (tmp_path / f"{name}.tar.gz").write_bytes(gzip.compress(tar_bytes(files, member_order)))
    start = time.perf_counter()
    loaded[name] = load_folder(tmp_path / f"{name}.tar.gz", "test", tmp_path / name)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
  assert_same(loaded["sorted"], loaded["unsorted"])
  assert loaded["sorted"].class_counts().tolist() == [1000] * 10
