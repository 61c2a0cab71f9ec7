"""Generates text with a run's base model and adapters.

    python scripts/generate.py --run=runs/default --hospital=clinic --prompt="Question: ..."
    python scripts/generate.py --run=runs/default --prompts=questions.jsonl --out=answers.jsonl

One prompt streams its answer to the terminal; a file of JSON lines ({"prompt": ..., "hospital":
...}, hospital optional) gives one JSON line per prompt, every hospital's adapter decoded in the
same batch. `--hospital` picks the hospital's personal adapter (FedSA-LoRA, `local`) or, for the
global algorithms, the run's global adapter; `--adapter` any PEFT adapter directory of the run's
shape. The model's chat template (tokenizer_config.json) wraps each prompt when it has one.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

_RUN = flags.DEFINE_string("run", "runs/default", "Run directory of scripts/train.py.")
_HOSPITAL = flags.DEFINE_string("hospital", None, "Use this hospital's adapter.")
_ADAPTER = flags.DEFINE_string("adapter", None, "Use this PEFT adapter directory.")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt; its answer is streamed.")
_PROMPTS = flags.DEFINE_string("prompts", None, "JSON lines of prompts.")
_OUT = flags.DEFINE_string("out", None, "Write the JSON lines here (default: stdout).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per prompt at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sampling.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0: all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts decoded at once.")
_CHAT = flags.DEFINE_bool("chat_template", True, "Wrap prompts in the model's chat template.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli  # pylint: disable=import-outside-toplevel

  def job():
    import jax  # pylint: disable=import-outside-toplevel

    from fedlora_jax import generation as G  # pylint: disable=import-outside-toplevel
    from fedlora_jax.data.tokenization import pad_token_id  # pylint: disable=import-outside-toplevel
    from fedlora_jax.generation import answer, run_dir, text  # pylint: disable=import-outside-toplevel
    if (_PROMPT.value is None) == (_PROMPTS.value is None):
      raise run_dir.GenerationError("give exactly one of --prompt and --prompts")
    if _HOSPITAL.value is not None and _ADAPTER.value is not None:
      raise run_dir.GenerationError("give at most one of --hospital and --adapter")
    run = run_dir.load_run(_RUN.value, adapter_dir=_ADAPTER.value)
    requests = ([answer.Request(_PROMPT.value, _HOSPITAL.value)] if _PROMPTS.value is None
                else answer.read_requests(_PROMPTS.value, _HOSPITAL.value))
    if _ADAPTER.value is not None and any(r.hospital for r in requests):
      raise run_dir.GenerationError("--adapter with prompts that name a hospital")
    if _ADAPTER.value is None:
      for r in requests:
        run.adapter_dir(r.hospital)  # unknown hospitals fail before any decoding
    config = G.DecodeConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                            top_k=_TOP_K.value, top_p=_TOP_P.value,
                            stop_ids=text.stop_ids(run.base_dir, run.tokenizer),
                            pad_id=pad_token_id(run.tokenizer))
    stream = (text.StreamPrinter(run.tokenizer, config.stop_ids) if _PROMPTS.value is None
              else None)
    results = answer.answer(run, requests, config, adapter_dir=_ADAPTER.value,
                            batch_size=_BATCH.value, use_chat_template=_CHAT.value,
                            rng=jax.random.key(_SEED.value), on_tokens=stream)
    if stream is not None:
      print(flush=True)
      return
    lines = "".join(json.dumps(r) + "\n" for r in results)
    if _OUT.value is None:
      sys.stdout.write(lines)
    else:
      with open(_OUT.value, "w") as f:
        f.write(lines)

  return run_cli(job)


if __name__ == "__main__":
  app.run(main)
