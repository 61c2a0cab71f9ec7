"""One-run privacy audit of a config (scripts/audit_privacy.py; the method: privacy/audit.py)."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import numpy as np

from fedlora_jax import data as D
from fedlora_jax import models
from fedlora_jax.privacy import audit as A
from fedlora_jax.run import experiment
from fedlora_jax.run.setup import expand, hospital_names, load_model
from fedlora_jax.run.workdir import write_json

CANARY_FILE = "canaries_in.jsonl"  # the included canaries, handed to the run as data.extra_train


def _words() -> list[str]:
  return sorted({w for t in D.icd10_titles() for w in t.lower().split() if w.isalpha()})


def audit(cfg, *, canaries: int, hospital: str = "", significance: float = 0.05
          ) -> dict[str, Any]:
  """Trains `cfg` once with canaries in `hospital` and returns (and writes to
  <workdir>/audit.json) the claimed epsilon next to the one-run lower bound."""
  if canaries < 20:
    raise ValueError(f"--canaries={canaries}: the one-run bound needs at least 20")
  if not 0 < significance < 1:
    raise ValueError(f"--significance={significance} must be in (0, 1)")
  if cfg.data.source != "icd10":
    raise ValueError("the audit's canaries use the embedded benchmark's labels (data.source="
                     "'icd10')")
  if cfg.data.extra_train:
    raise ValueError("data.extra_train is the audit's own (it inserts the canaries)")
  names = hospital_names(cfg)
  hospital = hospital or names[0]
  if hospital not in names:
    raise ValueError(f"--hospital={hospital!r} is not in this run ({names})")
  workdir = expand(cfg.workdir)
  if os.path.exists(os.path.join(workdir, "config.json")):
    raise ValueError(f"{workdir} already holds a run; an audit needs a fresh --config.workdir")
  rng = np.random.default_rng(secrets.randbits(128))  # the auditor's own randomness
  records = A.make_canaries(canaries, _words(), list(D.CHAPTER_LABELS.values()), rng)
  included = rng.random(canaries) < 0.5
  path = os.path.join(workdir, "audit", CANARY_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for r, inside in zip(records, included):
      if inside:
        f.write(json.dumps({"hospital": hospital, "question": r.question,
                            "options": list(r.options), "answer": r.answer, "source": r.source,
                            "id": r.id, "answer_style": r.answer_style}) + "\n")
  cfg.data.extra_train = path
  summary = experiment.run(cfg)

  model, tokenizer, _ = load_model(cfg)  # the initial global adapter: LoRA init from the seed
  graphdef, base, lora_before = models.split_lora(model)
  lora_after = models.load_peft_adapter(os.path.join(workdir, "adapter"), lora_before)
  tokenized = D.tokenize_mcq(tokenizer, records, cfg.data.max_len)
  scores = A.membership_scores(graphdef, base, lora_before, lora_after, tokenized)
  delta = float(cfg.privacy.delta)
  bound = A.epsilon_lower_bound(scores, included, significance=significance, delta=delta)
  privacy = summary.get("privacy")
  result = {
      "hospital": hospital, "level": cfg.privacy.level,
      "claimed_epsilon": None if privacy is None else privacy["epsilon"].get(
          hospital, privacy["epsilon"].get("federation")),
      "epsilon_lower_bound": bound, "significance": significance, "delta": delta,
      "canaries": canaries, "included": int(included.sum()),
      "mean_score_in": float(scores[included].mean()),
      "mean_score_out": float(scores[~included].mean()),
      "final_accuracy_mean": summary["fairness"]["mean"],
  }
  write_json(os.path.join(workdir, "audit.json"), result)
  return result
