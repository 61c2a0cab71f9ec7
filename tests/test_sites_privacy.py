"""Differential privacy in sites mode (without the network), against the simulation.

DP-SGD runs in each hospital with its own secret, DP-FedAvg at the server with the server's:
with the seeded research secrets injected (no config turns them on in sites mode) both equal the
simulation within 1e-5 with the same epsilons; with the hospitals' real secrets the same config,
seed and run nonce give another adapter, and nothing the server sends or receives holds a secret
or a noise key. A hospital refuses a plan whose z is not the genesis rules' and a replayed round
on other inputs; a resume keeps nonce, z and accountant, and needs the secrets it started with.
"""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedlora_jax import ledger as L
from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run import experiment, privacy_setup
from fedlora_jax.run.dp_keys import SGD_NOISE
from fedlora_jax.privacy.dp_sgd import ExampleDP
from fedlora_jax.sites.hospital_dp import RELEASES_FILE, HospitalDp, PlanRefused
from tests.sites_fixtures import InProcessTransport, run_in_process, sites_config

HOSPITALS = ("cardiology", "oncology", "trauma")
NONCE = "5eed" * 8
EXAMPLE = {"privacy.level": "example", "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 1.0}
CLIENT = {"privacy.level": "client", "privacy.noise_multiplier": 0.2, "privacy.clip_norm": 0.1,
          "privacy.adaptive_clipping": True}  # count noise 3 / 20 > z / 2
pytestmark = pytest.mark.slow  # about a minute per run on 2 shared cores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fixed_nonce():
  """Every run of this module draws the same public run nonce."""
  mp = pytest.MonkeyPatch()
  mp.setattr(privacy_setup, "new_run_nonce", lambda: NONCE)
  yield NONCE
  mp.undo()


def seeded(cfg):
  """`prepare` hook: the simulation's seeded research secrets at every party (tests only)."""
  def inject(coordinator, transport):
    for h, hospital in transport.hospitals.items():
      hospital.dp.secret = DpSecret.reproducible(cfg.seed, h)
    if coordinator.dp_keys.server is not None:
      coordinator.dp_keys.server = DpSecret.reproducible(cfg.seed, "server")
  return inject


class ViewTransport(InProcessTransport):
  """Keeps every message the server sends and every reply it receives (the server's view)."""

  def restart(self):
    super().restart()
    self.view = getattr(self, "view", [])

  def handle(self, h, kind, payload):
    reply = super().handle(h, kind, payload)
    self.view += [payload, reply]
    return reply


def _bytes(tree) -> bytes:
  """Every array's bytes and every other part's JSON, of a message tree."""
  if isinstance(tree, np.ndarray):
    return tree.tobytes()
  if isinstance(tree, dict):
    return b"".join(_bytes(v) for v in tree.values()) + json.dumps(
        {k: v for k, v in tree.items() if not isinstance(v, (dict, np.ndarray))},
        default=str).encode()
  return json.dumps(tree, default=str).encode()


def _adapter(workdir):
  return load_file(os.path.join(workdir, "adapter", "adapter_model.safetensors"))


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if json.loads(line)["round"] > 0]


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory, cache_dir, fixed_nonce):
  """DP-SGD: the simulation (seeded secrets), sites with the same seeded secrets, and sites with
  the hospitals' own secrets (keystores outside the server's run directory)."""
  sim, seeded_dir, real = (str(tmp_path_factory.mktemp(n)) for n in ("sim", "seeded", "real"))
  experiment.run(sites_config(sim, cache_dir, HOSPITALS, **EXAMPLE,
                              **{"privacy.reproducible_noise": True}))
  cfg = sites_config(seeded_dir, cache_dir, HOSPITALS, **EXAMPLE)
  run_in_process(cfg, prepare=seeded(cfg), root=seeded_dir + "-deploy")
  root = real + "-deploy"
  summary, enrolment, transport = run_in_process(
      sites_config(real, cache_dir, HOSPITALS, **EXAMPLE), root=root,
      transport_type=ViewTransport)
  return {"sim": sim, "seeded": seeded_dir, "real": real, "root": root, "summary": summary,
          "enrolment": enrolment, "transport": transport}


def test_sites_dp_sgd_equals_simulation(example_runs):
  a, b = _adapter(example_runs["sim"]), _adapter(example_runs["seeded"])
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  sim, sites = _records(example_runs["sim"]), _records(example_runs["seeded"])
  assert [r["privacy"]["epsilon"] for r in sites] == [r["privacy"]["epsilon"] for r in sim]
  # and the epsilon is the accountant's, called directly (every hospital in both rounds)
  sizes = {c["client"]: c["train"] for c in json.load(
      open(os.path.join(example_runs["sim"], "summary.json")))["clients"]}
  b_max = A.poisson_max_batch(list(sizes.values()), 4)
  for h, n in sizes.items():
    direct = A.epsilon(A.example_step_event(n, 4, b_max, 1.0), 2 * 2, 1e-5)
    np.testing.assert_allclose(sites[-1]["privacy"]["epsilon"][h], direct, rtol=1e-12)


def test_hospital_noise_depends_on_its_secret_not_on_what_the_server_knows(example_runs):
  """Same config, seed and run nonce, the hospitals' own secrets: another adapter; no message
  to or from the server holds a hospital's secret or any of its noise keys."""
  seeded_a, real = _adapter(example_runs["seeded"]), _adapter(example_runs["real"])
  assert max(float(np.abs(real[n] - seeded_a[n]).max()) for n in real) > 1e-3
  nonce = json.load(open(os.path.join(example_runs["real"], "privacy.json")))["run_nonce"]
  assert nonce == NONCE
  needles = []
  for h, node in example_runs["enrolment"].nodes.items():
    with open(os.path.join(node.keystore, "dp_secret"), "rb") as f:
      text = f.read().strip()
    needles += [text, bytes.fromhex(text.decode())]
    secret = DpSecret.load(node.keystore)
    for r in range(2):
      key = secret.jax_key(f"{SGD_NOISE}/{nonce}", r)
      needles += [key.astype("<u4").tobytes(), key.astype(">u4").tobytes(),
                  json.dumps(key.tolist()).encode()]
  view = b"".join(_bytes(m) for m in example_runs["transport"].view)
  assert len(example_runs["transport"].view) > 20 and len(view) > 10**5
  assert not [n for n in needles if n in view]
  for root, _, names in os.walk(example_runs["real"]):  # nor the server's run directory
    for n in names:
      with open(os.path.join(root, n), "rb") as f:
        data = f.read()
      assert not [x for x in needles if x in data], os.path.join(root, n)


def test_hospital_refuses_a_plan_the_genesis_does_not_record(example_runs):
  hospital = example_runs["transport"].hospitals["oncology"]
  genesis = hospital.signer.replica.state
  b_max = json.load(open(os.path.join(example_runs["real"], "privacy.json")))["max_batch_size"]
  plan = {"noise_multiplier": 1.0, "max_batch_size": b_max, "run_nonce": NONCE}
  dp = hospital.dp.check_plan(plan, genesis, genesis.ledger_id)
  assert dp.noise_multiplier == 1.0
  with pytest.raises(PlanRefused, match="noise multiplier 0.5 at delta 1e-05 is not the genesis"):
    hospital.dp.check_plan({**plan, "noise_multiplier": 0.5}, genesis, genesis.ledger_id)
  with pytest.raises(PlanRefused, match="is not the replica's"):
    hospital.dp.check_plan(plan, genesis, "another-ledger:00")
  with pytest.raises(PlanRefused, match="batch rows"):
    hospital.dp.check_plan({**plan, "max_batch_size": 1}, genesis, genesis.ledger_id)
  hospital.dp.server_public_key = bytes(48)  # a genesis not signed by the pinned key
  with pytest.raises(PlanRefused, match="pinned server key"):
    hospital.dp.check_plan(plan, genesis, genesis.ledger_id)
  # A round's keys are used on one input only: a replay on other inputs would cancel the noise.
  released = [json.loads(l) for l in open(hospital.dp.releases_path)]
  assert [(r["run_nonce"], r["round"]) for r in released] == [(NONCE, 1), (NONCE, 2)]
  first = released[0]
  hospital.dp.check_release(NONCE, 1, first["ledger_id"], first["inputs"], dp, b_max)  # same
  with pytest.raises(PlanRefused, match="already released on other inputs"):
    hospital.dp.check_release(NONCE, 1, first["ledger_id"], "00" * 32, dp, b_max)
  with pytest.raises(PlanRefused, match="already released on other inputs"):
    hospital.dp.check_release(NONCE, 1, "another-ledger:00", first["inputs"], dp, b_max)


def test_hospital_budget_holds_whatever_the_server_sends(example_runs, tmp_path):
  """The attack: the server sets the job, the plan and even the genesis rules, so it could ask
  for less noise, more rounds, or no DP at all. A hospital with its own max-epsilon accounts for
  itself over every release it made (every job): its epsilon after the run is the server's
  accountant's for it (the same PLD), a release past its budget is refused, a train message
  without a DP-SGD plan is refused, and a new job (another nonce) starts from what it spent."""
  hospital = example_runs["transport"].hospitals["oncology"]
  priv = json.load(open(os.path.join(example_runs["real"], "privacy.json")))
  n, b_max, k = hospital.dp.train_size, priv["max_batch_size"], priv["local_steps"]
  event = A.example_step_event(n, priv["expected_batch_size"], b_max, 1.0)
  three = A.epsilon(event, 3 * k, 1e-5)
  shutil.copy(hospital.dp.releases_path, tmp_path / RELEASES_FILE)  # the run's two releases
  dp = HospitalDp(hospital.dp.keystore, str(tmp_path), hospital.dp.cfg,
                  hospital.dp.server_public_key, n, max_epsilon=three * 1.001)  # one round more
  assert dp.spent() == pytest.approx(A.epsilon(event, 2 * k, 1e-5), rel=1e-12)
  summary = json.load(open(os.path.join(example_runs["real"], "summary.json")))
  assert dp.spent() == pytest.approx(summary["privacy"]["epsilon"]["oncology"], rel=1e-12)
  ledger_id = json.loads(open(dp.releases_path).readline())["ledger_id"]
  other = "ab" * 16  # a new job of the same server: another run nonce
  weak, good = (ExampleDP(z, 1.0, priv["expected_batch_size"]) for z in (0.5, 1.0))
  with pytest.raises(PlanRefused, match="past its max-epsilon"):
    dp.check_release(other, 1, ledger_id, "11" * 32, weak, b_max)
  dp.check_release(other, 1, ledger_id, "11" * 32, good, b_max)  # within the budget
  with pytest.raises(PlanRefused, match="past its max-epsilon"):
    dp.check_release(other, 2, ledger_id, "22" * 32, good, b_max)
  assert dp.spent() == pytest.approx(three, rel=1e-12)
  hospital.dp, kept = dp, hospital.dp
  try:
    with pytest.raises(PlanRefused, match="releases only DP-SGD updates"):
      hospital.train(3, 1, 4, {}, {}, {}, example_dp=None)
  finally:
    hospital.dp = kept


def test_sites_dp_run_records_epsilon_everywhere(example_runs):
  workdir = example_runs["real"]
  records = _records(workdir)
  assert [r["round"] for r in records] == [1, 2]
  for r in records:
    eps = r["privacy"]["epsilon"]
    assert set(eps) == set(HOSPITALS) and all(e > 0 for e in eps.values())
    assert r["loss"] == []  # the hospitals report no raw loss under DP-SGD
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["privacy"]["epsilon"] == records[-1]["privacy"]["epsilon"]
  assert summary["privacy"]["noise_multiplier"] == 1.0
  blocks = [b for b in L.Ledger.open(os.path.join(workdir, "ledger.jsonl")).blocks]
  assert blocks[0]["rules"]["privacy"] == {"unit": "example", "delta": 1e-5,
                                           "noise_multiplier": 1.0}
  spent = [b["privacy"] for b in blocks if b["kind"] == "round"]
  assert spent == [{"unit": "example", "epsilon": max(r["privacy"]["epsilon"].values()),
                    "delta": 1e-5, "noise_multiplier": 1.0, "clip": 1.0, "accountant": "pld"}
                   for r in records]
  check = L.verify_ledger(os.path.join(workdir, "ledger.jsonl"))
  assert check.ok and check.privacy == spent[-1]
  assert "epsilon = " in open(os.path.join(workdir, "report.md")).read()


def test_sites_resume_keeps_nonce_z_and_accountant_and_needs_the_secrets(example_runs,
                                                                           cache_dir):
  """Restarted after round 1 (checkpoint 1, the ledger already holding round 2's block), the
  run re-runs round 2 with the same secrets: the same adapter and the epsilons the ledger
  recorded (else the coordinator raises); without a hospital's secret it is refused. (The last
  test of the DP-SGD runs: it rewrites the real-secret run's directory.)"""
  workdir, root = example_runs["real"], example_runs["root"]
  before, records = _adapter(workdir), _records(workdir)
  for gone in ("checkpoints/2", "adapter", "summary.json"):
    path = os.path.join(workdir, gone)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  cfg = sites_config(workdir, cache_dir, HOSPITALS, **EXAMPLE)
  run_in_process(cfg, root=root)
  after = _adapter(workdir)
  for name in before:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert [r["privacy"] for r in _records(workdir)] == [r["privacy"] for r in records]
  assert json.load(open(os.path.join(workdir, "privacy.json")))["run_nonce"] == NONCE
  os.remove(os.path.join(root, "hospitals", "trauma", "keys", "dp_secret"))
  shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
  with pytest.raises(ValueError, match="dp_secret is missing"):
    run_in_process(cfg, root=root)


def test_sites_client_dp_equals_simulation(tmp_path, cache_dir, fixed_nonce):
  """DP-FedAvg with adaptive clipping at the server, its noise from the server's secret."""
  sim, sites = str(tmp_path / "sim"), str(tmp_path / "sites")
  experiment.run(sites_config(sim, cache_dir, HOSPITALS, **CLIENT,
                              **{"privacy.reproducible_noise": True}))
  cfg = sites_config(sites, cache_dir, HOSPITALS, **CLIENT)
  summary, _, _ = run_in_process(cfg, prepare=seeded(cfg))
  a, b = _adapter(sim), _adapter(sites)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  sim_records, records = _records(sim), _records(sites)
  assert [r["privacy"] for r in records] == [
      {k: v for k, v in r["privacy"].items() if k != "guarantee"} for r in sim_records]
  clips = [r["privacy"]["clip_norm"] for r in records]  # adaptive: the clip norm moved
  assert clips[0] == pytest.approx(0.1) and abs(clips[1] - clips[0]) > 1e-4
  np.testing.assert_allclose(summary["privacy"]["epsilon"]["federation"],
                             A.epsilon(A.client_round_event(0.2), 2, 1e-5), rtol=1e-12)
  assert os.path.exists(os.path.join(sites, "keys", "server", "dp_secret"))
  blocks = L.Ledger.open(os.path.join(sites, "ledger.jsonl")).blocks
  assert [p["weight"] for b in blocks if b["kind"] == "round"
          for p in b["participants"]] == [1 / 3] * 6  # DP-FedAvg's 1/m, as the rules say
