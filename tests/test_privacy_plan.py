"""Config -> plan: which safeguards and accountant a config yields, clear errors for bad
combinations (unknown level, no noise, adaptive clipping at example level, DP with a robust
rule, SCAFFOLD with client-level DP, unknown attacking hospitals), and a resume that keeps the
recorded noise multiplier or is refused."""

import pytest

from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.plan import PrivacyResumeError, attackers, privacy_plan
from tests.run_fixtures import default_config as _cfg

NAMES = ["a", "b", "c", "d", "e", "f"]
SIZES = [100, 120, 140, 160, 180, 200]


def test_no_privacy_by_default():
  plan = privacy_plan(_cfg(), NAMES, SIZES, 6)
  assert plan.accountant is None and plan.max_batch_size is None
  assert plan.safeguards.example_dp is None and plan.safeguards.client_dp is None
  assert not plan.safeguards.robust.active and not plan.safeguards.attack.active


def test_example_level_plan():
  plan = privacy_plan(_cfg(privacy__level="example", privacy__noise_multiplier=1.1,
                           privacy__clip_norm=0.5), NAMES, SIZES, 6)
  dp = plan.safeguards.example_dp
  assert (dp.noise_multiplier, dp.clip_norm, dp.expected_batch_size) == (1.1, 0.5, 8)
  assert plan.max_batch_size == A.poisson_max_batch(SIZES, 8)
  assert isinstance(plan.accountant, A.ExampleAccountant) and plan.accountant.local_steps == 10


def test_client_level_plan_with_adaptive_clipping():
  plan = privacy_plan(_cfg(privacy__level="client", privacy__noise_multiplier=0.5,
                           privacy__adaptive_clipping=True), NAMES, SIZES, 6)
  dp = plan.safeguards.client_dp
  assert dp.clients_per_round == 6 and dp.adaptive.count_noise == pytest.approx(0.3)
  assert isinstance(plan.accountant, A.ClientAccountant)


def test_robust_rule_and_attack_from_config():
  plan = privacy_plan(_cfg(fed__robust_rule="krum", fed__robust_f=1, attack__kind="scale",
                           attack__clients="b,e"), NAMES, SIZES, 6)
  assert plan.safeguards.robust.name == "krum" and plan.safeguards.attack.attackers == (1, 4)
  assert attackers("2", NAMES) == (0, 1) and attackers("", NAMES) == ()


@pytest.mark.parametrize("overrides,message", [
    (dict(privacy__level="patient"), "unknown privacy.level"),
    (dict(privacy__level="example"), "needs privacy.noise_multiplier > 0"),
    (dict(privacy__level="example", privacy__noise_multiplier=1.0,
          privacy__adaptive_clipping=True), "adaptive_clipping applies to"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0,
          fed__robust_rule="median"), "cannot be combined with robust rule"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0,
          privacy__adaptive_clipping=True), "count noise"),
    (dict(privacy__level="example", privacy__noise_multiplier=1.0, privacy__delta=0.0),
     "privacy.delta"),
    (dict(attack__kind="sign_flip", attack__clients="zz"), "unknown clients"),
    (dict(attack__kind="sign_flip", attack__clients="9"), "attack.clients=9"),
    (dict(fed__robust_rule="krum", fed__robust_f=3), "more than 6 clients"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0, fed__algorithm="scaffold"),
     "fed.algorithm='scaffold' with privacy.level='client' is refused: its per-client control "
     "variates reach the server unclipped and unnoised"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0, fed__algorithm="fedsa_lora"),
     "personal B is trained, checkpointed and exported without client-level noise"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0, fed__algorithm="local"),
     "own adapter is trained, checkpointed and exported without client-level noise"),
])
def test_bad_configs_are_clear_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    privacy_plan(_cfg(**overrides), NAMES, SIZES, 6)


def test_a_resume_keeps_the_recorded_noise_multiplier_whatever_fed_rounds_says():
  """More rounds on resume must not recalibrate z: the finished rounds were run at the old z."""
  cfg = _cfg(privacy__level="example", privacy__target_epsilon=4.0)
  first = privacy_plan(cfg, NAMES, SIZES, 6)
  cfg.fed.rounds = 3 * cfg.fed.rounds
  resumed = privacy_plan(cfg, NAMES, SIZES, 6, recorded=first.record())
  assert resumed.noise_multiplier == first.noise_multiplier
  assert privacy_plan(cfg, NAMES, SIZES, 6).noise_multiplier > first.noise_multiplier  # fresh


@pytest.mark.parametrize("change", [dict(privacy__clip_norm=2.0), dict(fed__local_steps=3),
                                    dict(privacy__noise_multiplier=0.9)])
def test_a_resume_that_changes_the_accounting_is_refused(change):
  cfg = _cfg(privacy__level="example", privacy__noise_multiplier=1.0)
  recorded = privacy_plan(cfg, NAMES, SIZES, 6).record()
  with pytest.raises(PrivacyResumeError, match="changes the privacy accounting"):
    privacy_plan(_cfg(**{"privacy__level": "example", "privacy__noise_multiplier": 1.0,
                         **change}), NAMES, SIZES, 6, recorded=recorded)
