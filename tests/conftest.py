"""Shared test problems with closed-form gradients in float64 numpy (independent of samx)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samx

# Multi-device tests run in subprocesses; keep the parent on one CPU device.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs are tiny, so their time goes to compiling them, not running them: XLA's
# backend optimisation level 0 compiles about twice as fast (the suite runs in half the time)
# and computes the same operations. Set the level in XLA_FLAGS yourself to test another.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

# Scripts the multi-device tests run in subprocesses with 8 virtual CPU devices. They are not
# imported by the doctest collection: multidevice_checks.py sets XLA_FLAGS at import, which
# would give this whole process 8 devices.
collect_ignore = ["transforms/multidevice_checks.py", "transforms/sharded_collectives_checks.py",
                  "train/devices_check.py", "train/fsdp_check.py"]


REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def run_on_eight_cpu_devices(script: pathlib.Path, *args: str, timeout: int
                             ) -> subprocess.CompletedProcess:
  """``python script *args`` in a subprocess with 8 virtual CPU devices (XLA_FLAGS must be set
  before JAX starts), importing samx from this checkout first: pytest puts it on this
  process's path, but an installed samx (or none) is what a bare subprocess would import."""
  from samx.train import virtual_cpu_devices_flags

  path = os.pathsep.join([str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])])
  env = {**os.environ, "XLA_FLAGS": virtual_cpu_devices_flags(8), "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": path}
  return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def squared_error(outputs, targets):
  return 0.5 * (outputs - targets) ** 2


def logistic_loss(outputs, targets):
  """Binary logistic loss with targets in {0, 1}: log(1 + e^z) - y z."""
  return jnp.logaddexp(0.0, outputs) - targets * outputs


def linear_apply(w, x):
  return x @ w


class LinearRegression:
  """L(w) = mean_i 0.5 (x_i.w - y_i)^2 = 0.5 w'Aw - c'w + const, grad = A w - c."""

  def __init__(self, n=16, d=5, seed=0):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(n, d))
    self.y = rng.normal(size=n)
    self.a = self.x.T @ self.x / n
    self.c = self.x.T @ self.y / n
    self.w = rng.normal(size=d)

  def grad(self, w, rows=slice(None)):
    x, y = self.x[rows], self.y[rows]
    return x.T @ (x @ w - y) / len(y)

  def objective(self, rows=slice(None)):
    return samx.Objective(linear_apply, squared_error, jnp.asarray(self.x[rows], jnp.float32),
                          jnp.asarray(self.y[rows], jnp.float32))


class LogisticRegression:
  """L(w) = mean_i log(1 + exp(x_i.w)) - y_i x_i.w, grad = mean_i (sigmoid(x_i.w) - y_i) x_i."""

  def __init__(self, n=16, d=4, seed=1):
    rng = np.random.default_rng(seed)
    self.x = rng.normal(size=(n, d))
    self.y = (rng.uniform(size=n) < 0.5).astype(np.float64)
    self.w = rng.normal(size=d)

  def grad(self, w, rows=slice(None)):
    x, y = self.x[rows], self.y[rows]
    return x.T @ (1.0 / (1.0 + np.exp(-(x @ w))) - y) / len(y)

  def objective(self, rows=slice(None)):
    return samx.Objective(linear_apply, logistic_loss, jnp.asarray(self.x[rows], jnp.float32),
                          jnp.asarray(self.y[rows], jnp.float32))


def sam_reference(grad_fn, w, rho):
  """Foret et al.'s SAM gradient in float64: grad at w + rho g / ||g||."""
  g = grad_fn(w)
  return grad_fn(w + rho * g / np.linalg.norm(g))


def asam_reference(grad_fn, w, rho, eta):
  """Kwon et al.'s ASAM gradient in float64: grad at w + rho T^2 g / ||T g||, T = |w| + eta."""
  g = grad_fn(w)
  t = np.abs(w) + eta
  return grad_fn(w + rho * t * t * g / np.linalg.norm(t * g))


def apply_once(tx, objective, params, grads=None):
  """One update of ``tx`` from a fresh state; returns (updates, new_state)."""
  params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
  grads = objective.grad(params) if grads is None else grads
  # Compiled: op-by-op dispatch of the vmapped per-example paths is several times slower.
  return jax.jit(lambda g, p: tx.update(g, tx.init(p), p, objective=objective))(grads, params)


@pytest.fixture
def regression():
  return LinearRegression()


@pytest.fixture
def logistic():
  return LogisticRegression()
