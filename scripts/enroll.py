r"""Hospital-side enrolment: creates this hospital's key (once; reused afterwards) and prints its
registration record, to send to the operator out of band.

  python scripts/enroll.py --name=cardiology --keystore=/secure/cardiology-keys \
      --num_samples=1200 [--out=reg.json]

The key is `<keystore>/<name>.key` (directory 0700, file 0600, from os randomness). The record is
one JSON line {"id", "name", "pk", "pop", "num_samples", "binding"}: `num_samples` is the declared
dataset size (no round may claim more), `binding` the key's signature over name, key and size.
The operator appends it to the registry file that a run reads with
`--config.ledger.registry=FILE` (JSON lines, see fedlora_jax/ledger/registry.py).
Exit status: 0 done; 1 bad name or an unusable keystore; --out refuses to overwrite a file.
"""

from __future__ import annotations

import sys

from absl import app, flags

from fedlora_jax.ledger import BACKEND_NAMES, enroll, registry_line

_NAME = flags.DEFINE_string("name", None, "Hospital name (as in the run's data).", required=True)
_KEYSTORE = flags.DEFINE_string("keystore", None, "This hospital's keystore directory.",
                                required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Declared dataset size (training "
                                    "examples): the most a signed count may claim.",
                                    required=True, lower_bound=0)
_OUT = flags.DEFINE_string("out", None, "Write the record to this new file instead of stdout.")
_BACKEND = flags.DEFINE_enum("backend", "auto", list(BACKEND_NAMES), "BLS backend.")


def main(argv: list[str]) -> int:
  del argv
  try:
    line = registry_line(enroll(_NAME.value, _KEYSTORE.value, _NUM_SAMPLES.value,
                                  _BACKEND.value)) + "\n"
    if _OUT.value:
      with open(_OUT.value, "x") as f:
        f.write(line)
    else:
      sys.stdout.write(line)
  except (ValueError, OSError) as e:  # LedgerError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
