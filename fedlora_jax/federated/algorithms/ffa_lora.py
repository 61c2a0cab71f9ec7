"""FFA-LoRA (Sun et al., 2024): A frozen at its shared random init, only B trained.

With every client's A equal, sum_c w_c B_c A = (sum_c w_c B_c) A: averaging B is exact.
"""

from __future__ import annotations

from fedlora_jax.federated.algorithms.base import Algorithm


def ffa_lora() -> Algorithm:
  return Algorithm(name="ffa_lora", trainable_parts=("lora_B",))
