#!/usr/bin/env bash
# The GPU figures of issues 15, 24 and 25 on one offline GPU machine (an H200: about 8 minutes for
# the bf16 training rounds, at most 4.5 more for the NF4 one and 7.5 for the decode runs: their
# time limits; not yet run).
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # from the repository root; OUT_DIR defaults to $OUT
#                                              # or ./gpu_results
#
# The machine has JAX (CUDA), flax, optax, orbax, torch and peft but no network. The project's
# other dependencies come from a wheels/ directory carried with the source tree, filled by the
# operator beforehand on a machine with network and the GPU machine's Python version:
#
#   pip download -d wheels --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       tokenizers datasets safetensors py-ecc absl-py ml-collections simple-icd-10-cm \
#       matplotlib dp-accounting scipy transformers setuptools wheel
#
# (use the GPU machine's `python -c 'import sys; print(sys.version_info[:2])'` for
# --python-version). Packages already installed there are not reinstalled.
#
# Runs `scripts/benchmark.py --sections=gpu` once per preset (bf16, full remat, random weights,
# 16 clients x K=1 x batch 2 x seq 512, LoRA r=16, plus a 64-client engine row for qwen3-1.7b;
# then qwen3-8b again over an NF4 base with a 64-client row: OUT_DIR/gpu_qwen3-8b_nf4.*):
# tokens/s and MFU (4N basis, against a measured 8192^3 bf16 matmul) of the engine with XLA and
# with cuDNN attention, of the same jitted client update called per client, and of PyTorch + PEFT
# training the clients one after another on the same GPU; device memory. Each preset writes
# OUT_DIR/gpu_<preset>.json and .md as it finishes; OUT_DIR/gpu_check.log has everything printed.
set -euo pipefail

cd "$(dirname "$0")/.."
out_dir="${1:-${OUT:-gpu_results}}"
mkdir -p "$out_dir"
log="$out_dir/gpu_check.log"
wheels="${WHEELS:-wheels}"

deps=(tokenizers datasets safetensors py-ecc absl-py ml-collections simple-icd-10-cm matplotlib
      dp-accounting scipy transformers setuptools)
missing=$(python - "${deps[@]}" <<'EOF'
import importlib.metadata as md
import sys


def installed(name):
  try:
    return bool(md.version(name))
  except md.PackageNotFoundError:
    return False


print(" ".join(d for d in sys.argv[1:] if not installed(d)))
EOF
)
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  if [ -n "$missing" ]; then
    echo "installing from $wheels: $missing"
    if [ ! -d "$wheels" ]; then
      echo "gpu_check: missing packages ($missing) and no $wheels/ directory (see the header)"
      exit 1
    fi
    pip install --no-index --find-links "$wheels" $missing
  fi
  pip install --no-index --no-deps --no-build-isolation -e . >/dev/null
  python -c "import jax, flax, torch, peft; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'torch', torch.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$log"

# JAX takes 60% of the GPU; PyTorch + PEFT runs in the same process in the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
run_preset() {  # preset, seconds allowed, output name, extra flags
  local preset=$1 limit=$2 name=$3
  shift 3
  timeout "$limit" python scripts/benchmark.py --sections=gpu --gpu_presets="$preset" \
      --gpu_shape=16,1,2,512,16 --repeats=3 --out_json="$out_dir/gpu_$name.json" \
      --out_md="$out_dir/gpu_$name.md" --note="scripts/gpu_check.sh on $(hostname)" "$@" \
      2>&1 | grep -v "^[IW][0-9]\{4\} " | tee -a "$log" \
    || echo "gpu_check: $preset did not finish within $limit s (rows so far are in $log)" \
      | tee -a "$log"
}
run_preset qwen3-1.7b 200 qwen3-1.7b --gpu_wide_clients=qwen3-1.7b:64
run_preset qwen3-8b 220 qwen3-8b --gpu_wide_clients=
# The 8B base stored in NF4 (issue 24): the engine's tokens/s and MFU over the quantized base,
# and with 64 clients on the one GPU; no PyTorch row (its base would be bf16: another program).
run_preset qwen3-8b 260 qwen3-8b_nf4 --gpu_quantize=nf4 --gpu_skip=torch \
    --gpu_wide_clients=qwen3-8b:64

# Decode (issue 25): KV-cached generation tokens/s in bf16 at batch 1 and 16 (prompt 128, 64 new
# tokens, LoRA r=16 unmerged and merged) against transformers + PEFT `generate` on the GPU (random
# torch weights of the same architecture: speed only), and 4 adapters in one batch of 16 against
# loops over them. Each preset writes OUT_DIR/decode_<preset>.json and .md.
run_decode() {  # preset, seconds allowed
  local preset=$1 limit=$2
  timeout "$limit" python scripts/benchmark.py --sections=decode --decode_preset="$preset" \
      --decode_dtype=bfloat16 --decode_torch_device=cuda --decode_batches=1,16 \
      --decode_shape=128,64,4,16 --repeats=3 --out_json="$out_dir/decode_$preset.json" \
      --out_md="$out_dir/decode_$preset.md" 2>&1 | grep -v "^[IW][0-9]\{4\} " | tee -a "$log" \
    || echo "gpu_check: decode $preset did not finish within $limit s (rows so far are in $log)" \
      | tee -a "$log"
}
run_decode qwen3-1.7b 200
run_decode qwen3-8b 240
echo "== done $(date -u +%FT%TZ); results in $out_dir" | tee -a "$log"
