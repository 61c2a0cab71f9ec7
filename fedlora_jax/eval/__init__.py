"""Evaluation: MCQ scoring by option-letter log-likelihood, and per-client fairness metrics."""

from fedlora_jax.eval.fairness import cross_matrix, fairness_summary, harmonic_mean
from fedlora_jax.eval.mcq import accuracy, option_log_probs, predict_options

__all__ = ["accuracy", "cross_matrix", "fairness_summary", "harmonic_mean", "option_log_probs",
           "predict_options"]
