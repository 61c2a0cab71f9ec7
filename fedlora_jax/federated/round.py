"""One federated round -- every sampled client's K local steps plus aggregation -- in one jit.

State (a plain dict, checkpointed as is):
  round          int32 []           rounds done
  rng            uint32 [2]         seeded key for dropout and simulated attacks; round r, client
                                    i use fold_in(fold_in(rng, r), i). Never DP noise: the
                                    round takes that as `noise_keys` / `server_noise_key`, secret
                                    keys of the party that adds it (privacy/secret.py).
  global_lora    LoRA tree          the global adapter
  server_state   tree               server optimizer (and SCAFFOLD's c)
  client_states  tree, leaves [N, ...]  persistent per-client state of all N clients ({} if none)

Clients run together: `jax.vmap` over the client axis of the LoRA params, optimizer states and
batches, with the base params shared (`in_axes=None`), so the base exists once per device (split
over the mesh's `model` axis); each client's K steps are a `lax.scan`. With a mesh, the client axis
is sharded over the `clients` axis and the weighted mean over clients becomes an all-reduce inside
the same program; `client_group_size` runs each shard's clients in groups, one after another.
Clients whose update is not finite are quarantined: weight 0, state kept, reported in `metrics["valid"]`.

Padding: a round's client axis holds "slots". A slot whose client id is `PAD` (-1) is a dummy
client: it trains on whatever batch it is given (zeros), is never valid, has weight 0 and writes
no client state, so any number of clients runs on any number of devices
(`ClientSharding.num_slots`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedlora_jax.federated.aggregation import all_finite_per_client, client_weights
from fedlora_jax.federated.algorithms.base import (Algorithm, ServerInputs, merge_parts,
                                                   split_parts)
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.federated.sharding import ClientSharding, in_client_groups
from fedlora_jax.models.functional import base_logical_axes, lm_loss

PyTree = Any
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
PAD = -1  # the client id of a padding slot


@dataclasses.dataclass(frozen=True)
class LocalTraining:
  """How each client trains locally in a round."""

  local_steps: int
  optimizer: str = "adamw"  # "adamw" | "adam" | "sgd"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  grad_clip_norm: float | None = 1.0
  uniform_weights: bool = False  # aggregate with equal weights instead of sample counts
  max_target_tokens: int | None = None  # see models.lm_loss
  logits_chunk: int = 4096

  def make_optimizer(self) -> optax.GradientTransformation:
    if self.optimizer == "adamw":
      opt = optax.adamw(self.learning_rate, weight_decay=self.weight_decay)
    elif self.optimizer == "adam":
      opt = optax.adam(self.learning_rate)
    elif self.optimizer == "sgd":
      opt = optax.sgd(self.learning_rate)
    else:
      raise ValueError(f"unknown local optimizer {self.optimizer!r} (adamw, adam, sgd)")
    return opt  # gradients reach it already clipped (and corrected): see client_train


def init_state(algorithm: Algorithm, global_lora: PyTree, num_clients: int, seed: int,
               safeguards: Safeguards = Safeguards()) -> dict:
  """The round-0 federated state (see module docstring); copies `global_lora`, since rounds
  donate (consume) the state they are given."""
  global_lora = jax.tree.map(jnp.array, global_lora)
  one = algorithm.init_client_state(global_lora)
  return {
      "round": jnp.zeros((), jnp.int32),
      "rng": jax.random.PRNGKey(seed),
      "global_lora": global_lora,
      "server_state": safeguards.init_server_state(algorithm.init_server_state(global_lora)),
      "client_states": jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), one),
  }


class FederatedRound:
  """Compiles and runs rounds: `state, base, metrics = fr(state, base, batches, ids, counts)`.

  Args:
    graphdef: the model graph from `models.split_lora`.
    algorithm: FedAvg or a variant.
    training: local training settings (K = training.local_steps).
    num_clients: N, all clients of the federation.
    sharding: shard the client axis over the mesh's `clients` axis and the base over its `model`
      axis (None: default device placement).
    client_group_size: train at most this many clients per `clients` shard at once, the groups
      one after another (bounds activation memory); 0: all of a shard's clients at once.
    safeguards: privacy / robustness / attack plug-ins (default: none).
  """

  def __init__(self, graphdef, algorithm: Algorithm, training: LocalTraining, num_clients: int,
               sharding: ClientSharding | None = None, client_group_size: int = 0,
               safeguards: Safeguards = Safeguards()):
    if client_group_size < 0:
      raise ValueError(f"client_group_size must be >= 0, got {client_group_size}")
    self.graphdef = graphdef
    self.algorithm = algorithm
    self.training = training
    self.num_clients = num_clients
    self.sharding = sharding
    self.client_group_size = client_group_size
    self.base_sharding = (None if sharding is None
                          else sharding.base(base_logical_axes(graphdef)))
    self.safeguards = safeguards
    self._optimizer = training.make_optimizer()
    self._jitted: dict[int, Any] = {}

  # --- one client ------------------------------------------------------------------------------
  def local_objective(self, base, frozen, start, dropout_key):
    """objective(trainable, batch) -> (value, loss) of a local step: the LM loss plus the
    algorithm's penalty (FedProx), differentiated as a whole (per example under DP-SGD)."""
    tr = self.training

    def objective(trainable, batch):
      lora = merge_parts(trainable, frozen)
      loss, _ = lm_loss(self.graphdef, base, lora, batch, max_target_tokens=tr.max_target_tokens,
                        logits_chunk=tr.logits_chunk, dropout_rng=dropout_key)
      return loss + self.algorithm.penalty(lora, start), loss
    return objective

  def client_train(self, base, global_lora, server_state, client_state, batches_k, key,
                   noise_key=None, noise_multiplier=None):
    """K local steps of one client. batches_k leaves: [K, B, S]. Returns (lora, state, losses[K]).

    key: the seeded dropout key; noise_key: uint32 [2], the client's secret DP-SGD key of the
    round (required under DP-SGD); noise_multiplier: its z (a scalar; required when DP-SGD's z
    is per client).

    Only the algorithm's `trainable_parts` are differentiated, clipped (global norm over them)
    and updated; the other parts stay bit-identical. Each step applies
    optimizer(correct_grads(clip(grad))); the mean of the clipped, uncorrected gradients goes to
    `client_final` (SCAFFOLD's control variate).
    """
    alg, tr = self.algorithm, self.training
    if noise_key is None:
      if self.safeguards.example_dp is not None:
        raise ValueError("example-level DP needs the client's secret noise key")
      noise_key = jnp.zeros((2,), jnp.uint32)
    start = alg.client_start(global_lora, client_state)
    train0, frozen = split_parts(start, alg.trainable_parts)
    clip = (optax.clip_by_global_norm(tr.grad_clip_norm) if tr.grad_clip_norm is not None
            else optax.identity())

    def step(carry, xs):
      train, opt_state, grad_sum = carry
      batch, i = xs
      step_key = jax.random.fold_in(key, i)
      step_noise = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(noise_key), i))

      objective = self.local_objective(base, frozen, start, step_key)
      # Plain gradients, or DP-SGD's clipped and noised per-example ones (Safeguards).
      grads, loss = self.safeguards.local_grads(objective, train, batch, step_noise,
                                                jax.tree.map(lambda _: True, train),
                                                noise_multiplier)
      grads, _ = clip.update(grads, clip.init(train))
      updates, opt_state = self._optimizer.update(
          alg.correct_grads(grads, client_state, server_state), opt_state, train)
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return (optax.apply_updates(train, updates), opt_state, grad_sum), loss

    steps = jnp.arange(tr.local_steps)
    carry0 = (train0, self._optimizer.init(train0), jax.tree.map(jnp.zeros_like, train0))
    (train, _, grad_sum), losses = jax.lax.scan(step, carry0, (batches_k, steps))
    local = merge_parts(train, frozen)
    mean_grad = jax.tree.map(lambda g: g / tr.local_steps, grad_sum)
    new_state = alg.client_final(client_state, server_state, start, local, mean_grad)
    return local, new_state, losses

  # --- the round -------------------------------------------------------------------------------
  def _train(self, state, base, batches, client_ids, noise_keys):
    """All sampled clients' local training: (local_c, new client states, losses [C, K])."""
    old_cs = self._gather_clients(state["client_states"], client_ids)
    round_key = jax.random.fold_in(state["rng"], state["round"])
    keys = jax.vmap(lambda i: jax.random.fold_in(round_key, i))(client_ids)
    dp = self.safeguards.example_dp
    zs = (dp.slot_noise(client_ids) if dp is not None
          else jnp.zeros(client_ids.shape, jnp.float32))  # each slot's DP-SGD z
    train_c = jax.vmap(self.client_train, in_axes=(None, None, None, 0, 0, 0, 0, 0))
    run = lambda xs: train_c(base, state["global_lora"], state["server_state"], *xs)
    shards = 1 if self.sharding is None else self.sharding.num_shards
    trained = in_client_groups(run, (old_cs, batches, keys, noise_keys, zs), shards,
                               self.client_group_size)
    return self.safeguards.attack_updates(trained, state, client_ids, self.num_clients)

  def _aggregate(self, state, base, trained, client_ids, num_samples, accept_c,
                 server_noise_key):
    """Server step over the clients that trained finitely and were accepted (`accept_c`)."""
    alg = self.algorithm
    local_c, new_cs, losses_ck = trained
    g, ss = state["global_lora"], state["server_state"]
    old_cs = self._gather_clients(state["client_states"], client_ids)
    finite = all_finite_per_client(local_c) & jnp.all(jnp.isfinite(losses_ck), axis=1)
    valid = finite & accept_c & (client_ids != PAD)
    weights = client_weights(num_samples, valid, uniform=self.training.uniform_weights)

    def keep_valid(new, old):  # excluded clients contribute their old value, never NaN * 0
      v = valid.reshape((-1,) + (1,) * (new.ndim - 1))
      return jnp.where(v, new, old)

    local_c = jax.tree.map(lambda l, gl: keep_valid(l, jnp.broadcast_to(gl, l.shape)), local_c, g)
    new_cs = jax.tree.map(keep_valid, new_cs, old_cs)
    new_g, new_ss, new_base = self.safeguards.server_update(alg, ServerInputs(
        global_lora=g, server_state=ss, local_c=local_c, weights_c=weights, valid_c=valid,
        old_client_state_c=old_cs, new_client_state_c=new_cs, base=base,
        num_clients=self.num_clients), state, server_noise_key)
    # No valid client, or too few for the robust rule: the round changes nothing (recorded),
    # except under Poisson-sampled DP-FedAvg, whose noise is released whatever the sample.
    aggregated = (jnp.any(valid) & self.safeguards.robust.enough(valid)
                  | self.safeguards.releases_when_empty)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(aggregated, a, b), new, old)
    new_state = {
        "round": state["round"] + 1,
        "rng": state["rng"],
        "global_lora": keep(new_g, g),
        "server_state": keep(new_ss, ss),
        "client_states": jax.tree.map(
            lambda a, u: a.at[self._scatter_index(client_ids)].set(u, mode="drop"),
            state["client_states"], new_cs),
    }
    metrics = {"loss": losses_ck, "valid": valid, "finite": finite, "weights": weights,
               "aggregated": aggregated}
    return new_state, keep(new_base, base) if alg.updates_base else base, metrics

  def _scatter_index(self, client_ids):
    """Padding slots point past the end (N), so a `mode="drop"` scatter skips them."""
    return jnp.where(client_ids == PAD, self.num_clients, client_ids)

  def _gather_clients(self, tree_n, client_ids):
    """Rows `client_ids` of every [N, ...] leaf (a padding slot reads row 0, never used)."""
    safe = jnp.where(client_ids == PAD, 0, client_ids)
    return jax.tree.map(lambda x: jnp.take(x, safe, axis=0), tree_n)

  def _round(self, state, base, batches, client_ids, num_samples, noise_keys, server_noise_key):
    trained = self._train(state, base, batches, client_ids, noise_keys)
    accept = jnp.ones(client_ids.shape, bool)
    return self._aggregate(state, base, trained, client_ids, num_samples, accept,
                           server_noise_key)

  def _compiled(self, kind: str, num_slots: int):
    """Jitted `kind` in {"round", "train", "aggregate"} for `num_slots` clients, with shardings."""
    key = (kind, num_slots)
    if key in self._jitted:
      return self._jitted[key]
    kw: dict[str, Any] = {}
    if self.sharding is not None:
      sh = self.sharding
      sh.check_clients(num_slots)
      rep, by_c, base_sh = sh.replicated, sh.by_client, self.base_sharding
      state_sh = self.state_shardings()
      metrics_sh = {"loss": by_c, "valid": by_c, "finite": by_c, "weights": by_c,
                    "aggregated": rep}
      out_sh = ((state_sh, base_sh, metrics_sh) if self.algorithm.updates_base
                else (state_sh, metrics_sh))
      kw = {
          "round": dict(in_shardings=(state_sh, base_sh, by_c, rep, rep, by_c, rep),
                        out_shardings=out_sh),
          "train": dict(in_shardings=(state_sh, base_sh, by_c, rep, by_c), out_shardings=by_c),
          "aggregate": dict(in_shardings=(state_sh, base_sh, by_c, rep, rep, rep, rep),
                            out_shardings=out_sh),
      }[kind]
    fn = {"round": self._round, "train": self._train, "aggregate": self._aggregate}[kind]
    if kind != "train" and not self.algorithm.updates_base:
      # An unchanged base is not an output: a program returning its input may copy it (XLA:CPU
      # did for a quantized base), and the caller holds the base anyway.
      fn = _drop_base(fn)
    donate = () if kind == "train" else ((0, 1) if self.algorithm.updates_base else (0,))
    jitted = jax.jit(fn, donate_argnums=donate, **kw)
    self._jitted[key] = jitted
    return jitted

  def state_shardings(self):
    """Sharding tree prefix for the state dict (client states split by client when they divide;
    LoRA trees replicated over `model`)."""
    sh = self.sharding
    assert sh is not None
    return {"round": sh.replicated, "rng": sh.replicated, "global_lora": sh.replicated,
            "server_state": sh.replicated, "client_states": sh.leading(self.num_clients)}

  def place(self, state: dict, base: PyTree) -> tuple[dict, PyTree]:
    """Puts state and base on the mesh, the base split by `base_sharding` (a no-op without
    sharding)."""
    if self.sharding is None:
      return state, base
    sh = self.sharding
    shardings = self.state_shardings()
    return ({k: sh.put(v, shardings[k]) for k, v in state.items()},
            sh.put(base, self.base_sharding))

  def num_slots(self, num_clients: int) -> int:
    """Slots a round of `num_clients` clients takes: a multiple of the mesh's client rows."""
    return num_clients if self.sharding is None else self.sharding.num_slots(num_clients)

  def _check(self, batches, client_ids, num_samples=None):
    client_ids = np.asarray(client_ids, np.int32)
    missing = [k for k in BATCH_KEYS if k not in batches]
    if missing:
      raise ValueError(f"batches lack {missing}")
    c = len(client_ids)
    real = client_ids[client_ids != PAD]
    if len(real) == 0 and not self.safeguards.releases_when_empty:
      raise ValueError("a round needs at least one participating client")
    if len(real) and (len(set(real.tolist())) != len(real) or real.min() < 0
                      or real.max() >= self.num_clients):
      raise ValueError(f"client ids must be distinct and in [0, {self.num_clients}) (or {PAD} "
                       f"for a padding slot): {client_ids}")
    shapes = {k: tuple(np.shape(batches[k])) for k in BATCH_KEYS}
    for k, s in shapes.items():
      if len(s) != 4 or s[0] != c or s[1] != self.training.local_steps or s != shapes["input_ids"]:
        raise ValueError(f"batch {k!r} has shape {s}; expected [clients={c}, local_steps="
                         f"{self.training.local_steps}, batch, seq] like input_ids "
                         f"{shapes['input_ids']}")
    if num_samples is not None and np.shape(num_samples) != (c,):
      raise ValueError(f"num_samples has shape {np.shape(num_samples)}, expected ({c},)")
    batches = {k: batches[k] for k in BATCH_KEYS}
    if self.sharding is not None:
      self.sharding.check_clients(c)  # before `put`, which fails less clearly
      batches = self.sharding.put(batches, self.sharding.by_client)
    return batches, client_ids

  def _noise_keys(self, noise_keys, num_slots: int) -> Any:
    """[S, 2] uint32 secret DP-SGD keys per slot (zeros when DP-SGD is off)."""
    if noise_keys is None:
      if self.safeguards.example_dp is not None:
        raise ValueError("example-level DP needs each hospital's secret noise keys "
                         "(noise_keys [slots, 2] uint32, from privacy.secret.DpSecret)")
      noise_keys = np.zeros((num_slots, 2), np.uint32)
    # A global array (pod) is checked without fetching it: its rows are other hosts' secrets.
    shape, dtype = np.shape(noise_keys), getattr(noise_keys, "dtype", None)
    if shape != (num_slots, 2) or dtype != np.uint32:
      raise ValueError(f"noise_keys must be uint32 [{num_slots}, 2], got {dtype} {shape}")
    if self.sharding is not None:
      return self.sharding.put(noise_keys, self.sharding.by_client)
    return noise_keys

  def _server_noise_key(self, server_noise_key) -> np.ndarray:
    """[2] uint32: the server's secret DP-FedAvg key of the round (zeros when it is off)."""
    if server_noise_key is None:
      if self.safeguards.client_dp is not None:
        raise ValueError("client-level DP needs the server's secret noise key "
                         "(server_noise_key [2] uint32, from privacy.secret.DpSecret)")
      return np.zeros((2,), np.uint32)
    key = np.asarray(server_noise_key)
    if key.shape != (2,) or key.dtype != np.uint32:
      raise ValueError(f"server_noise_key must be uint32 [2], got {key.dtype} {key.shape}")
    return key

  def __call__(self, state: dict, base: PyTree, batches: dict[str, Any], client_ids, num_samples,
               noise_keys=None, server_noise_key=None):
    """Runs one round (training and aggregation in one compiled program).

    Args:
      batches: `input_ids`, `attention_mask`, `loss_mask`, each [C, K, B, S] host arrays.
      client_ids: [C] ids of this round's clients (distinct, in [0, N)).
      num_samples: [C] each client's training-set size (FedAvg weights).
      noise_keys: [C, 2] uint32, each client's secret DP-SGD key of this round (DP-SGD only).
      server_noise_key: [2] uint32, the server's secret DP-FedAvg key of this round.
    Returns:
      (state, base, metrics) with metrics `loss` [C, K], `valid` [C], `finite` [C], `weights`
      [C], `aggregated` [] (False: no valid client, or too few for the robust rule; the round
      then leaves the global adapter and server state unchanged). The base is the input base unless the algorithm changes it (FedEx-LoRA). The input
      state (and base, for FedEx-LoRA) is donated. C clients that do not fill the mesh's client
      rows are padded with dummy clients here; the metrics cover the C real ones.
    """
    c = len(client_ids)
    if noise_keys is not None:
      noise_keys = np.asarray(noise_keys)
      if np.shape(noise_keys) != (c, 2):
        raise ValueError(f"noise_keys must be [{c}, 2], got {np.shape(noise_keys)}")
      noise_keys = pad_round({}, client_ids, noise_keys, self.num_slots(c))[2]
    batches, client_ids, num_samples = pad_round(batches, client_ids, num_samples,
                                                 self.num_slots(c))
    batches, client_ids = self._check(batches, client_ids, num_samples)
    state, base, metrics = self._with_base(self._compiled("round", len(client_ids))(
        state, base, batches, client_ids, np.asarray(num_samples, np.float32),
        self._noise_keys(noise_keys, len(client_ids)), self._server_noise_key(server_noise_key)),
        base)
    if len(client_ids) != c:
      metrics = {k: v if k == "aggregated" else v[:c] for k, v in metrics.items()}
    return state, base, metrics

  def train(self, state: dict, base: PyTree, batches: dict[str, Any], client_ids,
            noise_keys=None):
    """Phase 1 of an attested round: local training only -> (local_c, client_states_c, loss_ck).

    Inputs are slot-level: `client_ids` [S] with `PAD` for dummy slots and S a multiple of the
    mesh's client rows (`num_slots`); `batches` [S, K, B, S] host or global arrays. The host can
    then digest each client's `local_c` update and verify its attestation before `aggregate`
    excludes the rejected ones. `noise_keys` [S, 2] uint32: each slot's secret DP-SGD key (a host
    array, or a global one built from the processes' rows).
    """
    batches, client_ids = self._check(batches, client_ids)
    return self._compiled("train", len(client_ids))(
        state, base, batches, client_ids, self._noise_keys(noise_keys, len(client_ids)))

  def aggregate(self, state: dict, base: PyTree, trained, client_ids, num_samples, accept,
                server_noise_key=None):
    """Phase 2: the server step over accepted ([S] bool) slots; returns like `__call__` (with
    [S] slot-level metrics). `server_noise_key` [2] uint32: the server's secret DP-FedAvg key."""
    client_ids = np.asarray(client_ids, np.int32)
    accept = np.asarray(accept, bool)
    if accept.shape != client_ids.shape or np.shape(num_samples) != client_ids.shape:
      raise ValueError(f"accept {accept.shape} and num_samples {np.shape(num_samples)} must "
                       f"match client_ids {client_ids.shape}")
    return self._with_base(self._compiled("aggregate", len(client_ids))(
        state, base, trained, client_ids, np.asarray(num_samples, np.float32), accept,
        self._server_noise_key(server_noise_key)), base)

  def _with_base(self, out: tuple, base: PyTree) -> tuple:
    """(state, base, metrics) from a compiled round's outputs (see `_drop_base`)."""
    return out if self.algorithm.updates_base else (out[0], base, out[1])

  def lower(self, state, base, batches, client_ids, num_samples):
    """The lowered fused round (for memory analysis and benchmarks; zero noise keys)."""
    batches = {k: batches[k] for k in BATCH_KEYS}
    return self._compiled("round", len(client_ids)).lower(
        state, base, batches, np.asarray(client_ids, np.int32),
        np.asarray(num_samples, np.float32), np.zeros((len(client_ids), 2), np.uint32),
        np.zeros((2,), np.uint32))


def _drop_base(fn):
  """`fn` returning (state, metrics) instead of (state, base, metrics)."""
  def without_base(*args):
    state, _, metrics = fn(*args)
    return state, metrics
  return without_base


def pad_round(batches: dict[str, Any], client_ids, num_samples, num_slots: int):
  """Appends dummy clients (id `PAD`, zero batches, zero samples) up to `num_slots`."""
  client_ids = np.asarray(client_ids, np.int32)
  extra = num_slots - len(client_ids)
  if extra <= 0:
    return batches, client_ids, num_samples
  pad = lambda x: np.concatenate([np.asarray(x), np.zeros((extra,) + np.shape(x)[1:],
                                                          np.asarray(x).dtype)])
  return ({k: pad(v) for k, v in batches.items()},
          np.concatenate([client_ids, np.full(extra, PAD, np.int32)]), pad(num_samples))
