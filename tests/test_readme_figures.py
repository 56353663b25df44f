"""The README's figures are what the code prints: the quick-start table is compared with a fresh
``samx compare``, and the ``mnist-cpu`` accuracy with a fresh ``samx train``.

The runs are deterministic on one machine, but floating-point results depend on the versions of
JAX, XLA and NumPy and on the CPU's vector instructions (XLA compiles for the CPU it runs on), so
the figures are stated for the versions in ``constraints.txt`` on an x86-64 CPU with AVX-512
(the vector features in ``MEASURED_ON``): there the table must match to the last digit;
elsewhere the test checks it within the spread that README.md gives (measured with
``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` and ``SSE4_2``).
"""

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The largest difference of a figure in the quick-start table between environments: 0.046
# measured (L-SAM's memorization under SSE4.2 against AVX-512; README.md), with a margin.
SPREAD = 0.06


def pinned_versions() -> dict[str, str]:
  pins = {}
  for line in (ROOT / "constraints.txt").read_text().splitlines():
    if line.startswith("# Tools"):  # what follows pins the documentation and type tools
      break
    line = line.split("#")[0].strip()
    if line:
      name, _, version = line.partition("==")
      pins[name.strip()] = version.strip()
  return pins


def other_versions() -> list[str]:
  """``name installed (pinned)`` for each package whose version is not the pinned one."""
  differ = []
  for name, version in pinned_versions().items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = "missing"
    if installed != version:
      differ.append(f"{name} {installed} ({version} pinned)")
  return differ


# The vector-instruction flags of the CPU the figures were measured on (XLA compiles for the
# CPU's own features, and other features may round differently).
MEASURED_ON = {
    "avx", "avx2", "avx512_bf16", "avx512_bitalg", "avx512_vbmi2", "avx512_vnni",
    "avx512_vpopcntdq", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512ifma",
    "avx512vbmi", "avx512vl", "f16c", "fma", "sse", "sse2", "sse4_1", "sse4_2", "sse4a", "ssse3"}


def vector_flags() -> set[str]:
  """The vector-instruction flags of this CPU (empty where /proc/cpuinfo is not there)."""
  path = pathlib.Path("/proc/cpuinfo")
  if not path.exists():
    return set()
  for line in path.read_text().splitlines():
    if line.startswith("flags"):
      return {flag for flag in line.split(":", 1)[1].split()
              if re.match(r"(avx|fma|amx|f16c|sse|ssse)", flag)}
  return set()


def same_environment() -> list[str]:
  """What differs from the environment the figures were measured in (empty: nothing)."""
  differ = other_versions()
  if vector_flags() != MEASURED_ON or "isa" in os.environ.get("XLA_FLAGS", ""):
    differ.append("a CPU with other vector instructions (or some turned off)")
  return differ


def readme_quickstart_table(text: str = README) -> dict[str, list[str]]:
  """The rows of the first table of ``samx compare`` in ``text`` (the README's by default):
  optimizer -> its cells."""
  lines = text.split("| optimizer | best test acc |", 1)[1].splitlines()[2:]
  rows = {}
  for line in lines:
    if not line.startswith("|"):
      break
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    rows[cells[0]] = cells[1:]
  return rows


def run(*args, timeout=600):
  """``samx ARGS`` as a user runs it: without the test suite's faster-compiling XLA setting
  (tests/conftest.py), which rounds differently."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  flags = env.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "").strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-m", "samx", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_the_getting_started_page_shows_the_readme_table():
  page = (ROOT / "docs" / "quickstart.md").read_text()
  assert readme_quickstart_table(page) == readme_quickstart_table()


def test_the_constraints_pin_the_packages_samx_computes_with():
  assert {"jax", "jaxlib", "flax", "optax", "numpy"} <= set(pinned_versions())
  assert "pip install -e . -c constraints.txt" in README


@pytest.mark.slow  # five trainings of the quick start, about 40 s
def test_the_quick_start_table_is_what_samx_compare_prints(tmp_path):
  run("compare", "--no-progress", "--out", str(tmp_path / "cmp"))
  summaries = json.loads((tmp_path / "cmp" / "compare.json").read_text())
  keys = ("best_test_accuracy", "best_epoch", "final_test_accuracy", "final_noisy_memorization",
          "final_noisy_true_label_accuracy", "final_train_clean_accuracy")
  printed = {label: [f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k]) for k in keys]
             for label, s in summaries.items()}
  documented = readme_quickstart_table()
  assert list(printed) == list(documented)
  differ = same_environment()
  if not differ:
    assert printed == documented
    return
  for label, cells in printed.items():
    for got, shown in zip(cells, documented[label], strict=True):
      if "." in shown:
        assert abs(float(got) - float(shown)) <= SPREAD, (label, got, shown, differ)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SAMX_DATA_DIR"), reason="needs SAMX_DATA_DIR")
def test_the_mnist_cpu_accuracy_is_what_samx_train_prints(tmp_path):
  run("train", "--no-progress", "--preset", "mnist-cpu", "--run-dir", str(tmp_path / "run"))
  accuracy = json.loads((tmp_path / "run" / "summary.json").read_text())["best_test_accuracy"]
  shown = float(re.search(r"2 epochs of SGD \((\d+\.\d+)% test accuracy", README).group(1))
  if not same_environment():
    assert f"{100 * accuracy:.1f}" == f"{shown:.1f}"
  else:
    assert abs(100 * accuracy - shown) <= 100 * SPREAD
