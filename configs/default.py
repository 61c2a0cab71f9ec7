"""The CPU demo: six hospitals on the embedded ICD-10-CM benchmark, a tiny pretrained Qwen3-architecture
base, LoRA on all projections, FedAvg, the BLS identity ledger on.

    python scripts/train.py --config=configs/default.py --config.workdir=runs/default

Every field can be overridden on the command line (``--config.fed.rounds=20``); unknown keys are
an error. Variants (``configs/fedprox.py``, ``configs/qwen3_8b.py``, ...) import this file and
change a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/default"
  c.cache_dir = "~/.cache/fedlora_jax"  # benchmark, tokenizer and pretrained tiny base
  c.resume = True  # continue from the workdir's latest checkpoint if there is one

  c.model = ml_collections.ConfigDict()
  c.model.hf_path = ""  # local HF model directory; empty: the tiny base pretrained below
  c.model.preset = "qwen3-tiny"  # architecture of the tiny base (vocab set by its tokenizer)
  c.model.hidden_size = 128
  c.model.intermediate_size = 384
  c.model.num_hidden_layers = 2
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2
  c.model.head_dim = 32
  c.model.param_dtype = "float32"
  c.model.dtype = "float32"
  c.model.remat_policy = "auto"  # none full save_base_matmuls save_named; auto: GPU full, else none
  c.model.attention_impl = "auto"  # xla, cudnn (GPU, bf16/fp16); auto: cudnn on GPU with bf16/fp16
  c.model.fuse_lora = "auto"  # on: one LoRA-A matmul for q/k/v, one for gate/up; off; auto: GPU on
  c.model.scan_layers = "auto"  # on: layers stacked [L, ...], one lax.scan; auto: off on CPU
  c.model.quantize = "none"  # frozen projections stored as none int8 int4 nf4 (QLoRA; the tiny
  #                           base is pretrained in float and quantized as loaded)
  c.model.quant_block_size = 64  # input columns per quantization scale; 0: one per output channel
  c.model.quant_scale_dtype = "float32"  # float32 or bfloat16
  c.model.compile_cache = True  # JAX's persistent compilation cache in <cache_dir>/jax_cache

  c.pretrain = ml_collections.ConfigDict()  # only for the tiny base (model.hf_path empty)
  c.pretrain.steps = 300
  c.pretrain.batch_size = 16
  c.pretrain.seq_len = 128
  c.pretrain.learning_rate = 3e-3
  c.pretrain.descriptions = 5000  # public diagnosis descriptions, unlabelled (no benchmark code)
  c.pretrain.format_drills = 20000  # questions with random options and answers: the format only

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj")
  c.lora.target_regex = ""  # when set, replaces target_modules (full match on module paths)
  c.lora.use_rslora = False
  c.lora.dropout = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.source = "icd10"  # "icd10" (embedded) or "files" (MedQA / MedMCQA / PubMedQA paths)
  c.data.seed = -1  # icd10 split and tiny-base pretraining; -1: the run's seed (compare fixes 0)
  c.data.level = "chapter"  # icd10: "chapter" (easier) or "block" (harder)
  c.data.chapter_style = "label"  # icd10 chapter options: "label" (one word, answered by it)
  #                                  or "title" (chapter titles, lettered, answered by the letter)
  c.data.tokenizer_vocab = 4096  # icd10 with the tiny base: BPE trained on ICD text
  c.data.max_len = 64
  c.data.medqa = ""  # files: local JSON/JSONL/parquet paths; empty ones are skipped
  c.data.medmcqa = ""
  c.data.pubmedqa = ""
  c.data.partition = "natural"  # files: natural (one client per source), dirichlet, iid, quantity
  c.data.num_clients = 4  # files with dirichlet / iid / quantity partitions
  c.data.dirichlet_alpha = 0.3
  c.data.test_fraction = 0.2  # files: held-out share of each client's data
  # icd10: k times every hospital's training records, same case mixes, same val and test sets;
  # the tiny base leaves out the codes of the benchmark at this scale (so it changes with k)
  c.data.scale = 1
  c.data.hospitals = ()  # only these hospitals (names); empty: all of them
  # icd10: > 0 deals each hospital's training records into data.clinics / hospitals clinics (the
  # clients; same case mix as their hospital); tests stay per hospital. 0: the hospitals
  c.data.clinics = 0
  c.data.extra_train = ""  # JSON lines of questions (+ "hospital") added to training (audits)

  c.fed = ml_collections.ConfigDict()
  c.fed.algorithm = "fedavg"  # fedavg fedprox fedavgm fedadam fedyogi fedadagrad scaffold
  #                             ffa_lora fedsa_lora fedex_lora local (single-client baseline)
  c.fed.centralized = False  # pool every client's data into one client (the centralized baseline)
  c.fed.rounds = 20
  c.fed.clients_per_round = 0  # 0: all clients every round
  c.fed.local_steps = 10
  c.fed.batch_size = 8
  c.fed.local_optimizer = "adamw"
  c.fed.local_lr = 5e-3
  c.fed.weight_decay = 0.0
  c.fed.grad_clip_norm = 1.0
  c.fed.uniform_weights = False
  c.fed.server_lr = 1.0
  c.fed.server_momentum = 0.9
  c.fed.server_b1 = 0.9
  c.fed.server_b2 = 0.99
  c.fed.server_eps = 1e-3
  c.fed.fedprox_mu = 0.01
  c.fed.client_group_size = 0  # clients of a device trained at once, groups in turn; 0: all

  c.mesh = ml_collections.ConfigDict()  # the clients x model device mesh (every process's devices)
  c.mesh.clients = 0  # devices along the client axis (may span hosts); 0: all devices / model
  c.mesh.model = 0  # devices splitting the frozen base, tensor parallel, inside a host; 0: 1
  c.fed.robust_rule = "mean"  # mean (no rule) median trimmed_mean krum multi_krum geometric_median
  c.fed.robust_f = 1  # Byzantine clients tolerated: Krum's f; trimmed mean drops f from each end
  c.fed.robust_norm_bound = 0.0  # > 0: clip every client's update to this norm before the rule
  c.fed.robust_gm_nu = 0.1  # geometric median: Weiszfeld smoothing (min distance)
  c.fed.robust_gm_iters = 3  # geometric median: Weiszfeld iterations

  c.privacy = ml_collections.ConfigDict()
  c.privacy.level = "none"  # none, example (DP-SGD; unit: one training record), client (DP-FedAvg)
  c.privacy.noise_multiplier = 0.0  # z; 0 with target_epsilon > 0: calibrated before training
  c.privacy.clip_norm = 1.0  # C: per-example gradient / per-client update clip (adaptive: initial)
  c.privacy.target_epsilon = 0.0  # > 0: the budget; the run stops before a round would exceed it
  c.privacy.delta = 1e-5  # delta at which epsilon is reported
  c.privacy.adaptive_clipping = False  # client level: move C toward a quantile (Andrew et al.)
  c.privacy.target_quantile = 0.5  # adaptive clipping: quantile of update norms C tracks
  c.privacy.clip_lr = 0.2  # adaptive clipping: geometric step eta
  c.privacy.count_noise = 0.0  # adaptive clipping: std of the clipped-count noise; 0: m / 20
  # > 0: each client takes part in a round independently with this probability q (Poisson, drawn
  # with the server's secret at client level), in a fixed number of slots; DP-FedAvg divides by
  # q N and the accountant credits amplification (privacy/accounting.py says against whom).
  # Excludes fed.clients_per_round. Level "none": the same sampling from the config seed.
  c.privacy.client_sampling_rate = 0.0
  # Research only: DP noise and sampling from the config seed, so runs replay bit for bit. Such a
  # run has NO privacy guarantee (anyone with config.json can subtract the noise) and says so in
  # metrics, the ledger, summary and report; sites mode refuses it. Off: each party's secret.
  c.privacy.reproducible_noise = False
  # example level with a target epsilon: "shared" (one z; the smallest hospital, sampled at the
  # highest rate, binds everyone's noise) or "per_client" (each hospital its own z reaching the
  # same epsilon; simulation and pod only)
  c.privacy.calibration = "shared"

  c.attack = ml_collections.ConfigDict()  # simulated compromised hospitals (evaluation only)
  c.attack.kind = "none"  # none, sign_flip, scale (model replacement), gaussian, alie
  c.attack.clients = ""  # attacking hospitals: comma-separated names, or a count (the first k)
  c.attack.scale = 0.0  # the attack's factor / std / z; 0: the kind's default (attacks.py)

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 1  # rounds
  c.eval.batch_size = 150
  c.eval.max_test_per_client = 0  # 0: the whole test set
  c.eval.round_max_test_per_client = 50  # per-round evaluation on the first N (0: all); final: all
  c.eval.group_size = 8  # (adapter, test batch) pairs each device scores at once
  c.eval.mode = "likelihood"  # likelihood: the best option's answer token; generate: also the
  #                             final adapters' greedy free-text answers, normalised exact match

  c.ledger = ml_collections.ConfigDict()
  c.ledger.enabled = True
  c.ledger.backend = "auto"  # auto (fastest installed: blspy, arkworks), blspy, arkworks, py_ecc
  c.ledger.registry = ""  # enrolled hospitals (JSON lines from scripts/enroll.py); empty: self-enrol
  c.ledger.keystores = ""  # directory of the hospitals' <name>/ keystores; empty: <workdir>/keys
  # counts above a hospital's declared dataset size (enrolment) are always rejected; this caps
  # further: reject attestations claiming more samples; 0: the declared size only
  c.ledger.max_samples_per_client = 0

  c.sites = ml_collections.ConfigDict()  # cross-silo mode (scripts/deploy_local.py, Flower)
  c.sites.server_keystore = ""  # the operator's keystore directory holding server.key
  c.sites.round_timeout = 600.0  # seconds the server waits for a round's replies
  c.sites.tls = False  # deploy_local: TLS with certificates it generates (else insecure)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1
  c.checkpoint.keep = 2
  return c
