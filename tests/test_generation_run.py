"""Generation with a tiny finished FedSA-LoRA run (personal adapters per hospital, eval.mode=
generate): scripts/generate.py's streamed answer and JSON lines equal the decoder's, every
hospital's adapter in one batch equals each alone, a missing run, adapter, hospital or tokenizer
is one clear error, and the run's free-text scores equal a full-forward reference."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fedlora_jax import generation as G
from fedlora_jax import models
from fedlora_jax.data.records import MCQRecord
from fedlora_jax.data.tokenization import pad_token_id
from fedlora_jax.eval import generative
from fedlora_jax.generation import answer, run_dir, text
from fedlora_jax.run import experiment, generative_eval, setup
from fedlora_jax.sites.job import check_job
from tests.run_fixtures import ROOT, tiny_config

PROMPT = "Question: Malignant neoplasm of upper lobe, left bronchus or lung\nAnswer:"
NEW = 6


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_config(workdir, str(tmp_path_factory.mktemp("cache")), **{
      "fed.rounds": 1, "fed.algorithm": "fedsa_lora", "ledger.enabled": False,
      "eval.mode": "generate"})
  summary = experiment.run(cfg)
  return workdir, cfg, summary


def _script(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "generate.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300, check=False)


def _config(run: run_dir.RunModel) -> G.DecodeConfig:
  return G.DecodeConfig(max_new_tokens=NEW, stop_ids=text.stop_ids(run.base_dir, run.tokenizer),
                        pad_id=pad_token_id(run.tokenizer))


def test_one_prompt_streams_the_hospitals_personal_answer(finished):
  workdir = finished[0]
  result = _script(f"--run={workdir}", "--hospital=clinic", f"--prompt={PROMPT}",
                   f"--max_new_tokens={NEW}")
  assert result.returncode == 0, result.stderr
  run = run_dir.load_run(workdir)
  assert run.adapter_dir("clinic") == os.path.join(workdir, "adapters", "clinic")
  [expected] = answer.answer(run, [answer.Request(PROMPT, "clinic")], _config(run))
  assert expected["completion"].strip()
  assert result.stdout == expected["completion"] + "\n"


def test_prompt_file_decodes_every_hospital_in_one_batch_as_each_alone(finished, tmp_path):
  workdir = finished[0]
  hospitals = ["clinic", "oncology", None, "clinic", "trauma"]
  prompts = tmp_path / "prompts.jsonl"
  with open(prompts, "w") as f:
    for i, h in enumerate(hospitals):
      f.write(json.dumps({"prompt": f"{PROMPT} {i}", **({"hospital": h} if h else {})}) + "\n")
  out = tmp_path / "answers.jsonl"
  result = _script(f"--run={workdir}", f"--prompts={prompts}", f"--out={out}",
                   f"--max_new_tokens={NEW}")
  assert result.returncode == 0, result.stderr
  got = [json.loads(line) for line in open(out)]
  run = run_dir.load_run(workdir)
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
  workdir = finished[0]
  with pytest.raises(run_dir.GenerationError, match="has not finished"):
    os.makedirs(tmp_path / "unfinished")
    shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "unfinished")
    run_dir.load_run(str(tmp_path / "unfinished"))
  run = run_dir.load_run(workdir)
  with pytest.raises(run_dir.GenerationError, match="unknown hospital 'nobody'.*clinic"):
    run.adapter_dir("nobody")
  with pytest.raises(run_dir.GenerationError, match="no such adapter directory"):
    run.lora(str(tmp_path / "missing"))
  # An adapter of another rank.
  other = tmp_path / "rank2"
  shutil.copytree(os.path.join(workdir, "adapter"), other)
  cfg = json.load(open(other / "adapter_config.json"))
  json.dump({**cfg, "r": 2}, open(other / "adapter_config.json", "w"))
  with pytest.raises(run_dir.GenerationError, match="rank 2"):
    run.lora(str(other))
  # A base directory without a tokenizer.
  base = tmp_path / "base"
  shutil.copytree(run.base_dir, base)
  os.remove(base / "tokenizer.json")
  adapter = tmp_path / "adapter"
  shutil.copytree(os.path.join(workdir, "adapter"), adapter)
  json.dump({**cfg, "base_model_name_or_path": str(base)}, open(adapter / "adapter_config.json", "w"))
  with pytest.raises(run_dir.GenerationError, match="no usable tokenizer"):
    run_dir.load_run(workdir, adapter_dir=str(adapter))
  # Malformed prompt files.
  bad = tmp_path / "bad.jsonl"
  for content, message in (("{\"prompt\": 1}\n", "bad.jsonl:1: expected an object"),
                           ("{\"prompt\": \"a\"}\nnot json\n", "bad.jsonl:2: not JSON"),
                           ("\n", "no prompts")):
    bad.write_text(content)
    with pytest.raises(run_dir.GenerationError, match=message):
      answer.read_requests(str(bad), None)


def test_free_text_scores_equal_a_full_forward_reference(finished):
  """The chapter labels are one token, so the free-text answer is the argmax over the whole
  vocabulary after "Answer:" (one full forward, no cache), normalised, against the label."""
  workdir, cfg, summary = finished
  model, tokenizer, _ = setup.load_model(cfg)
  data = setup.load_client_data(cfg, tokenizer)
  graphdef, base, like = models.split_lora(model)
  test_records = setup.client_records(cfg, set(range(len(data.test_names))))[2]
  expected = {}
  for t, name in enumerate(data.test_names):
    lora = models.load_peft_adapter(os.path.join(workdir, "adapters", name), like)
    test = data.test[t]
    logits = models.last_logits(graphdef, base, lora, test.input_ids, test.attention_mask,
                                test.answer_pos)
    words = [tokenizer.decode([int(i)]) for i in np.argmax(np.asarray(logits), axis=-1)]
    expected[name] = float(np.mean([
        generative.normalise(w) == generative.normalise(r.options[r.answer])
        for w, r in zip(words, test_records[t])]))
  assert summary["generate"]["accuracy"] == pytest.approx(expected, abs=1e-9)
  assert summary["generate"]["fairness"]["min"] == pytest.approx(min(expected.values()))
  report = open(os.path.join(workdir, "report.md")).read()
  assert "| client | likelihood | generate |" in report
  assert f"| clinic | {summary['accuracy']['clinic']:.3f} | {expected['clinic']:.3f} |" in report


def test_eval_mode_is_checked(finished):
  cfg = finished[1]
  with pytest.raises(ValueError, match="eval.mode must be one of"):
    generative_eval.check_mode(tiny_config("/unused", "/unused", **{"eval.mode": "sample"}), 1)
  with pytest.raises(ValueError, match="one process"):
    generative_eval.check_mode(cfg, 2)
  with pytest.raises(ValueError, match="sites mode scores by likelihood"):
    check_job(cfg)


@pytest.mark.parametrize("completion,record,right", [
    (" Neoplasm\nQuestion: ...", MCQRecord("q", ("circulatory", "neoplasm"), 1, "icd10cm", "x",
                                           answer_style="option"), True),
    (" neoplasm neoplasm", MCQRecord("q", ("circulatory", "neoplasm"), 1, "icd10cm", "x",
                                     answer_style="option"), False),
    (" B", MCQRecord("q", ("Aspirin", "Heparin"), 1, "medqa", "y"), True),
    (" b) heparin.", MCQRecord("q", ("Aspirin", "Heparin"), 1, "medqa", "y"), True),
    (" Heparin", MCQRecord("q", ("Aspirin", "Heparin"), 1, "medqa", "y"), True),
    (" A", MCQRecord("q", ("Aspirin", "Heparin"), 1, "medqa", "y"), False),
    ("\n\n", MCQRecord("q", ("Aspirin", "Heparin"), 1, "medqa", "y"), False),
])
def test_normalised_exact_match(completion, record, right):
  assert generative.is_correct(completion, record) is right


def test_chat_template_of_the_tokenizer_config_wraps_the_prompt(finished, tmp_path):
  run = run_dir.load_run(finished[0])
  model_dir = tmp_path / "chat"
  shutil.copytree(run.base_dir, model_dir)
  template = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
  json.dump({"chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast"},
            open(model_dir / "tokenizer_config.json", "w"))
  assert text.format_prompt(str(model_dir), "Fever?", True) == (
      "<|user|>Fever?\n<|assistant|>", True)
  assert text.format_prompt(str(model_dir), "Fever?", False) == ("Fever?", False)
  assert text.format_prompt(run.base_dir, "Fever?", True) == ("Fever?", False)  # no template
