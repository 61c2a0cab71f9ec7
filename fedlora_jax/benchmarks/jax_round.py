"""Timing a federated round of this engine, and of the same JAX code one client at a time.

Both variants train the same model on the same batches with the same local optimizer. The engine
is `FederatedRound` (all clients vmapped in one jitted call, sharded when several devices
exist); the sequential variant jits `FederatedRound.client_train` once and calls it per client,
then averages the adapters with a jitted weighted mean. Compilation is timed apart (an explicit
`lower().compile()` plus the first call) and never enters throughput; throughput is the median
over timed repetitions, with batches already on the device.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fedlora_jax import federated, models
from fedlora_jax.benchmarks.data import RoundShape, client_batches, trained_tokens
from fedlora_jax.benchmarks.machine import PeakRSS, device_memory
from fedlora_jax.federated.safeguards import Safeguards


@dataclasses.dataclass
class Setup:
  """A model with LoRA, split for the engine."""

  cfg: models.ModelConfig
  lora_config: models.LoRAConfig
  model: models.CausalLM
  graphdef: Any
  base: dict
  lora: dict


def build(cfg: models.ModelConfig, rank: int, *, alpha: float | None = None,
          seed: int = 0) -> Setup:
  """Random base weights (no download) and a PEFT-initialised LoRA of rank `rank` on all seven
  projections (alpha = 2r unless given)."""
  lcfg = models.LoRAConfig(rank=rank, alpha=2.0 * rank if alpha is None else alpha)
  model = models.CausalLM(cfg, rngs=nnx.Rngs(params=seed))
  models.add_lora(model, lcfg, rngs=nnx.Rngs(lora=seed + 1))
  graphdef, base, lora = models.split_lora(model)
  return Setup(cfg, lcfg, model, graphdef, base, lora)


def with_model_config(setup: Setup, cfg: models.ModelConfig) -> Setup:
  """The same weights and adapter under another config of the same architecture (e.g. another
  attention implementation, or the layer scan: then the params are stacked or unstacked; or a
  quantized base: then the float projections are quantized)."""
  def build():
    m = models.CausalLM(cfg, rngs=nnx.Rngs(params=0))
    models.add_lora(m, setup.lora_config, rngs=nnx.Rngs(lora=1))
    return m

  graphdef, base, lora = models.split_lora(nnx.eval_shape(build))
  old_base, old_lora = setup.base, setup.lora
  if models.is_stacked(base) != models.is_stacked(old_base):  # the layer scan on or off
    convert = models.stack_layers if models.is_stacked(base) else models.unstack_layers
    old_base, old_lora = convert(old_base), convert(old_lora)
  if cfg.quant_format != setup.cfg.quant_format:
    if setup.cfg.quant_format is not None:
      raise ValueError("a quantized base is derived from the float one, not re-quantized")
    is_q = lambda x: isinstance(x, models.QuantizedWeight)
    old_base = jax.tree.map(lambda n, o: cfg.quant_format.quantize(o) if is_q(n) else o,
                            base, old_base, is_leaf=is_q)
  for new, old in ((base, old_base), (lora, old_lora)):
    if jax.tree.map(lambda x: (x.shape, x.dtype), new) != jax.tree.map(
        lambda x: (x.shape, x.dtype), old):
      raise ValueError(f"{cfg} does not have the parameters of {setup.cfg}")
  return dataclasses.replace(setup, cfg=cfg, graphdef=graphdef, base=old_base, lora=old_lora)


def local_training(shape: RoundShape, **kw) -> federated.LocalTraining:
  return federated.LocalTraining(local_steps=shape.local_steps, **kw)


def _median(xs):
  return float(np.median(np.asarray(xs))) if xs else float("nan")


@dataclasses.dataclass
class RoundTiming:
  """Seconds of each timed round, compile time, tokens per round and peak memory."""

  name: str
  round_s: list[float]
  compile_s: float
  first_call_s: float
  tokens: int
  host_peak_rss_growth_bytes: int
  device_memory: dict | None = None
  memory_analysis: dict | None = None
  losses: list | None = None  # [C, K] of the first round (from the initial adapter)
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def median_s(self) -> float:
    return _median(self.round_s)

  @property
  def tokens_per_s(self) -> float:
    return self.tokens / self.median_s

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(median_s=self.median_s, tokens_per_s=self.tokens_per_s)
    return d


def _memory_analysis(compiled) -> dict | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def _first_and_repeats(run_once: Callable[[], Any], repeats: int):
  """Runs `run_once` (which returns what to block on and the losses) once untimed-for-throughput,
  then `repeats` timed times: (first call s, first losses, timed round s)."""
  t = time.perf_counter()
  out, losses = run_once()
  jax.block_until_ready(out)
  first_s = time.perf_counter() - t
  first_losses = np.asarray(losses).tolist()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out, _ = run_once()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return first_s, first_losses, times


def engine(setup: Setup, shape: RoundShape, training: federated.LocalTraining, *,
            algorithm: str = "fedavg", sharding: federated.ClientSharding | None = None,
            safeguards: Safeguards = Safeguards()):
  """(round, placed initial state, placed base, client ids [C], sample counts [C]) of C clients."""
  alg = federated.make_algorithm(algorithm)
  c = shape.clients
  fr = federated.FederatedRound(setup.graphdef, alg, training, num_clients=c, sharding=sharding,
                                safeguards=safeguards)
  state = federated.init_state(alg, setup.lora, c, seed=0, safeguards=safeguards)
  state, base = fr.place(state, setup.base)
  return fr, state, base, np.arange(c), np.full(c, 100.0)


def time_engine(setup: Setup, shape: RoundShape, batches: dict, *, repeats: int,
                training: federated.LocalTraining | None = None,
                sharding: federated.ClientSharding | None = None,
                algorithm: str = "fedavg", safeguards: Safeguards = Safeguards(),
                name: str = "engine") -> RoundTiming:
  """All C clients in one jitted round, `repeats` timed rounds after compile and a first call."""
  fr, state, base, ids, counts = engine(setup, shape, training or local_training(shape),
                                         algorithm=algorithm, sharding=sharding,
                                         safeguards=safeguards)
  dev_batches = {k: jnp.asarray(v) for k, v in batches.items()}
  with PeakRSS() as mem:
    t = time.perf_counter()
    compiled = fr.lower(state, base, dev_batches, ids, counts).compile()
    compile_s = time.perf_counter() - t
    carry = {"state": state}

    # DP-SGD's noise keys: fresh OS randomness (a benchmark releases nothing, but never a constant)
    noise_keys = (np.frombuffer(os.urandom(8 * len(ids)), np.uint32).reshape(len(ids), 2)
                  if safeguards.example_dp is not None else None)

    def run_once():
      carry["state"], _, metrics = fr(carry["state"], base, dev_batches, ids, counts, noise_keys)
      return (carry["state"], metrics), metrics["loss"]

    first_s, first_losses, times = _first_and_repeats(run_once, repeats)
  return RoundTiming(
      name=name, round_s=times, compile_s=compile_s, first_call_s=first_s,
      tokens=trained_tokens(batches), host_peak_rss_growth_bytes=mem.growth,
      device_memory=device_memory(), memory_analysis=_memory_analysis(compiled),
      losses=first_losses)


def interleaved_engines(setups: dict[str, Setup], shape: RoundShape, batches: dict, *,
                        repeats: int, training: federated.LocalTraining) -> dict[str, dict]:
  """Engine rounds of several variants of one model, compiled first, then timed in turns
  (variant 1, 2, ..., 1, 2, ...) so that a shared machine's load hits them alike.

  Returns per variant: {"round_s": [...], "median_s", "tokens_per_s", "compile_s", "losses"}.
  """
  dev_batches = {k: jnp.asarray(v) for k, v in batches.items()}
  runs, out = {}, {}
  for name, setup in setups.items():
    fr, state, base, ids, counts = engine(setup, shape, training)
    t = time.perf_counter()
    fr.lower(state, base, dev_batches, ids, counts).compile()
    out[name] = {"compile_s": time.perf_counter() - t, "round_s": []}
    state, _, m = fr(state, base, dev_batches, ids, counts)  # first call
    out[name]["losses"] = np.asarray(m["loss"]).tolist()  # [C, K], from the initial adapter
    runs[name] = (fr, base, {"state": state})
  for _ in range(repeats):
    for name, (fr, base, carry) in runs.items():
      t = time.perf_counter()
      carry["state"], _, m = fr(carry["state"], base, dev_batches, ids, counts)
      jax.block_until_ready((carry["state"], m))
      out[name]["round_s"].append(time.perf_counter() - t)
  tokens = trained_tokens(batches)
  for d in out.values():
    d["median_s"] = _median(d["round_s"])
    d["tokens_per_s"] = tokens / d["median_s"]
  return out


def time_sequential(setup: Setup, shape: RoundShape, batches: dict, *, repeats: int,
                    training: federated.LocalTraining | None = None,
                    algorithm: str = "fedavg") -> RoundTiming:
  """The same jitted client update called once per client, then a jitted weighted mean."""
  tr = training or local_training(shape)
  alg = federated.make_algorithm(algorithm)
  c = shape.clients
  fr = federated.FederatedRound(setup.graphdef, alg, tr, num_clients=c)
  state = federated.init_state(alg, setup.lora, c, seed=0)
  one_state = jax.tree.map(lambda x: x[0], state["client_states"])
  client = jax.jit(fr.client_train)
  weights = jnp.full((c,), 1.0 / c)  # equal counts, as in time_engine
  average = jax.jit(federated.weighted_mean)

  per_client = [{k: jnp.asarray(v[i]) for k, v in batches.items()} for i in range(c)]
  keys = [jax.random.fold_in(state["rng"], i) for i in range(c)]

  def one_round(global_lora):
    locals_, losses = [], []
    for i in range(c):
      local, _, loss = client(setup.base, global_lora, state["server_state"], one_state,
                              per_client[i], keys[i])
      locals_.append(local)
      losses.append(loss)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *locals_)
    return average(stacked, weights), jnp.stack(losses)

  g = state["global_lora"]
  with PeakRSS() as mem:
    t = time.perf_counter()
    compiled = client.lower(setup.base, g, state["server_state"], one_state, per_client[0],
                            keys[0]).compile()
    compile_s = time.perf_counter() - t
    carry = {"global": g}

    def run_once():
      carry["global"], losses = one_round(carry["global"])
      return (carry["global"], losses), losses

    first_s, first_losses, times = _first_and_repeats(run_once, repeats)
  return RoundTiming(
      name="sequential_jax", round_s=times, compile_s=compile_s, first_call_s=first_s,
      tokens=trained_tokens(batches), host_peak_rss_growth_bytes=mem.growth,
      device_memory=device_memory(), memory_analysis=_memory_analysis(compiled),
      losses=first_losses)


def scaling_sweep(cfg: models.ModelConfig, points: list[RoundShape], *, repeats: int,
                  training_kw: dict | None = None, seed: int = 0, log=print) -> list[dict]:
  """Engine round time, throughput, compile time and memory for each shape (one compile each)."""
  rows = []
  setups: dict[int, Setup] = {}
  for shape in points:
    if shape.rank not in setups:
      setups[shape.rank] = build(cfg, shape.rank, seed=seed)
    batches = client_batches(shape, cfg.vocab_size, seed=seed)
    timing = time_engine(setups[shape.rank], shape, batches, repeats=repeats,
                         training=local_training(shape, **(training_kw or {})))
    row = {"shape": dataclasses.asdict(shape), **timing.to_dict()}
    row.pop("losses", None)
    rows.append(row)
    log(f"  scaling C={shape.clients:3d} K={shape.local_steps} B={shape.batch} S={shape.seq:4d} "
        f"r={shape.rank:3d}: {timing.median_s * 1e3:8.1f} ms/round, "
        f"{timing.tokens_per_s:8.0f} tok/s, compile {timing.compile_s:5.1f} s, "
        f"host RSS +{timing.host_peak_rss_growth_bytes / 2**20:.0f} MiB")
  return rows


def linear_fit(tokens: list[float], seconds: list[float]) -> dict[str, float]:
  """Least squares seconds = a + b * tokens, with R^2 (a: fixed cost per round)."""
  x, y = np.asarray(tokens, float), np.asarray(seconds, float)
  b, a = np.polyfit(x, y, 1)
  pred = a + b * x
  ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
  return {"intercept_s": float(a), "s_per_token": float(b),
          "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}
