"""Data: the embedded ICD-10-CM benchmark, MedQA / MedMCQA / PubMedQA loaders, the prompt
template, tokenization to fixed-shape arrays, non-IID partitions and per-round client batches."""

from fedlora_jax.data.batching import client_order, poisson_round_batches, pooled, round_batches
from fedlora_jax.data.icd10 import (DEFAULT_HOSPITALS, ClientSplits, HospitalSpec, ICD10Benchmark,
                                    build_icd10_benchmark, chapter_names, dominant_chapter_share,
                                    icd10_corpus, icd10_tabular_text, icd10_titles,
                                    public_questions)
from fedlora_jax.data.loaders import load_medmcqa, load_medqa, load_pubmedqa
from fedlora_jax.data.partition import (check_partition, dirichlet_partition, iid_partition,
                                        label_shares, mean_max_label_share, natural_partition,
                                        partition_report, quantity_skew_partition)
from fedlora_jax.data.prompts import answer_text, format_prompt
from fedlora_jax.data.records import DataError, MCQRecord
from fedlora_jax.data.tokenization import (TokenizedMCQ, load_hf_tokenizer, pad_token_id,
                                           tokenize_mcq, train_icd_tokenizer)

__all__ = [
    "DEFAULT_HOSPITALS", "ClientSplits", "DataError", "HospitalSpec", "ICD10Benchmark",
    "MCQRecord", "TokenizedMCQ", "answer_text", "build_icd10_benchmark", "chapter_names",
    "check_partition", "client_order", "dirichlet_partition", "dominant_chapter_share",
    "format_prompt", "icd10_corpus", "icd10_tabular_text", "icd10_titles", "iid_partition", "label_shares", "load_hf_tokenizer",
    "load_medmcqa", "load_medqa", "load_pubmedqa", "mean_max_label_share", "natural_partition",
    "partition_report", "pad_token_id", "poisson_round_batches", "pooled", "public_questions", "quantity_skew_partition", "round_batches",
    "tokenize_mcq", "train_icd_tokenizer",
]
