"""Data: the embedded ICD-10-CM benchmark, MedQA / MedMCQA / PubMedQA loaders, the prompt
template, tokenization to fixed-shape arrays, non-IID partitions and per-round client batches."""

from fedlora_jax.data.batching import client_order, poisson_round_batches, pooled, round_batches
from fedlora_jax.data.icd10 import (CHAPTER_LABELS, DEFAULT_HOSPITALS, ClientSplits,
                                    HospitalSpec, ICD10Benchmark, build_icd10_benchmark,
                                    chapter_names, chapter_options, dominant_chapter_share,
                                    format_drills, icd10_corpus, icd10_titles,
                                    public_descriptions)
from fedlora_jax.data.loaders import load_extra_train, load_medmcqa, load_medqa, load_pubmedqa
from fedlora_jax.data.partition import (check_partition, dirichlet_partition, iid_partition,
                                        label_shares, mean_max_label_share, natural_partition,
                                        partition_report, quantity_skew_partition)
from fedlora_jax.data.prompts import answer_text, candidate_texts, format_prompt
from fedlora_jax.data.records import DataError, MCQRecord
from fedlora_jax.data.tokenization import (TokenizedMCQ, load_hf_tokenizer, pad_token_id,
                                           tokenize_mcq, train_icd_tokenizer)

__all__ = [
    "CHAPTER_LABELS", "ClientSplits", "DEFAULT_HOSPITALS", "DataError", "HospitalSpec",
    "ICD10Benchmark", "MCQRecord", "TokenizedMCQ", "answer_text", "build_icd10_benchmark",
    "candidate_texts", "chapter_names", "chapter_options", "check_partition", "client_order",
    "dirichlet_partition", "dominant_chapter_share", "format_drills", "format_prompt",
    "icd10_corpus", "icd10_titles", "iid_partition", "label_shares", "load_extra_train",
    "load_hf_tokenizer", "load_medmcqa", "load_medqa", "load_pubmedqa", "mean_max_label_share",
    "natural_partition", "pad_token_id", "partition_report", "poisson_round_batches", "pooled",
    "public_descriptions", "quantity_skew_partition", "round_batches", "tokenize_mcq",
    "train_icd_tokenizer",
]
