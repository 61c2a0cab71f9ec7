"""scripts/generate.py on a tiny finished FedSA-LoRA run (personal adapters per hospital): the
streamed answer and the JSON lines equal the decoder's, every hospital's adapter in one batch
equals each alone, and a missing run, adapter, hospital or tokenizer is one clear error."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fedlora_jax import generation as G
from fedlora_jax.generation import answer, run_dir, text
from fedlora_jax.run import experiment
from tests.run_fixtures import ROOT, tiny_config

PROMPT = "Question: Malignant neoplasm of upper lobe, left bronchus or lung\nAnswer:"
NEW = 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(workdir, str(tmp_path_factory.mktemp("cache")), **{
      "fed.rounds": 1, "fed.algorithm": "fedsa_lora", "ledger.enabled": False})
  experiment.run(cfg)
  return workdir


def _script(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "generate.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300, check=False)


def _config(run: run_dir.RunModel) -> G.DecodeConfig:
  return G.DecodeConfig(max_new_tokens=NEW, stop_ids=text.stop_ids(run.base_dir, run.tokenizer),
                        pad_id=answer.pad_token_id(run.tokenizer))


def test_one_prompt_streams_the_hospitals_personal_answer(finished):
  result = _script(f"--run={finished}", "--hospital=clinic", f"--prompt={PROMPT}",
                   f"--max_new_tokens={NEW}")
  assert result.returncode == 0, result.stderr
  run = run_dir.load_run(finished)
  assert run.adapter_dir("clinic") == os.path.join(finished, "adapters", "clinic")
  [expected] = answer.answer(run, [answer.Request(PROMPT, "clinic")], _config(run))
  assert expected["completion"].strip()
  assert result.stdout == expected["completion"] + "\n"


def test_prompt_file_decodes_every_hospital_in_one_batch_as_each_alone(finished, tmp_path):
  hospitals = ["clinic", "oncology", None, "clinic", "trauma"]
  prompts = tmp_path / "prompts.jsonl"
  with open(prompts, "w") as f:
    for i, h in enumerate(hospitals):
      f.write(json.dumps({"prompt": f"{PROMPT} {i}", **({"hospital": h} if h else {})}) + "\n")
  out = tmp_path / "answers.jsonl"
  result = _script(f"--run={finished}", f"--prompts={prompts}", f"--out={out}",
                   f"--max_new_tokens={NEW}")
  assert result.returncode == 0, result.stderr
  got = [json.loads(line) for line in open(out)]
  run = run_dir.load_run(finished)
  for i, (record, h) in enumerate(zip(got, hospitals)):
    [alone] = answer.answer(run, [answer.Request(f"{PROMPT} {i}", h)], _config(run))
    assert record == alone
  adapters = {r["adapter"] for r in got}
  assert len(adapters) == 4  # three personal adapters and the global one
  # The personal adapters differ (FedSA-LoRA keeps B per hospital), so the batch really mixed
  # adapters: the same prompt under two hospitals' adapters gives different logits.
  ids, mask = G.left_pad([text.encode(run.tokenizer, PROMPT, False)], 0)
  logits = [G.generate(run.graphdef, run.base, run.lora(run.adapter_dir(h)), ids, mask,
                       G.DecodeConfig(max_new_tokens=1), keep_logits=True).logits
            for h in ("clinic", "oncology")]
  assert np.abs(np.asarray(logits[0]) - np.asarray(logits[1])).max() > 1e-4


def test_missing_run_is_one_line_and_nonzero_exit(tmp_path):
  result = _script(f"--run={tmp_path / 'nope'}", "--prompt=x")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: GenerationError: {tmp_path / 'nope'}: no such run directory")


def test_bad_inputs_are_clear_errors(finished, tmp_path):
  with pytest.raises(run_dir.GenerationError, match="has not finished"):
    os.makedirs(tmp_path / "unfinished")
    shutil.copy(os.path.join(finished, "config.json"), tmp_path / "unfinished")
    run_dir.load_run(str(tmp_path / "unfinished"))
  run = run_dir.load_run(finished)
  with pytest.raises(run_dir.GenerationError, match="unknown hospital 'nobody'.*clinic"):
    run.adapter_dir("nobody")
  with pytest.raises(run_dir.GenerationError, match="no such adapter directory"):
    run.lora(str(tmp_path / "missing"))
  # An adapter of another rank.
  other = tmp_path / "rank2"
  shutil.copytree(os.path.join(finished, "adapter"), other)
  cfg = json.load(open(other / "adapter_config.json"))
  json.dump({**cfg, "r": 2}, open(other / "adapter_config.json", "w"))
  with pytest.raises(run_dir.GenerationError, match="rank 2"):
    run.lora(str(other))
  # A base directory without a tokenizer.
  base = tmp_path / "base"
  shutil.copytree(run.base_dir, base)
  os.remove(base / "tokenizer.json")
  adapter = tmp_path / "adapter"
  shutil.copytree(os.path.join(finished, "adapter"), adapter)
  json.dump({**cfg, "base_model_name_or_path": str(base)}, open(adapter / "adapter_config.json", "w"))
  with pytest.raises(run_dir.GenerationError, match="no usable tokenizer"):
    run_dir.load_run(finished, adapter_dir=str(adapter))
  # Malformed prompt files.
  bad = tmp_path / "bad.jsonl"
  for content, message in (("{\"prompt\": 1}\n", "bad.jsonl:1: expected an object"),
                           ("{\"prompt\": \"a\"}\nnot json\n", "bad.jsonl:2: not JSON"),
                           ("\n", "no prompts")):
    bad.write_text(content)
    with pytest.raises(run_dir.GenerationError, match=message):
      answer.read_requests(str(bad), None)
