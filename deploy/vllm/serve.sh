#!/bin/bash
# Serve dcoder's AR export with stock vLLM: the AR model dir is a plain Qwen3ForCausalLM
# checkpoint (safetensors + config.json + tokenizer files), so `vllm serve` takes it as is.
#   pip install vllm        # on a CUDA machine; not a dcoder dependency
#   dcoder export runs/pair/ar --out models/ar
#   VLLM_API_KEY=$(cat deploy/secrets/api_key) deploy/vllm/serve.sh models/ar [extra vllm args]
# Not for the DLM export: vLLM decodes left to right only; serve the DLM with `dcoder serve`.
# vLLM checks the key (VLLM_API_KEY, read from the environment so it stays out of `ps`) only on
# /v1/*; it binds to loopback here, so put an allow-listing proxy in front before exposing it.
set -euo pipefail

if [ "$#" -lt 1 ] || [ ! -f "$1/config.json" ]; then
  echo "usage: $0 AR_MODEL_DIR [vllm serve args...]   (AR_MODEL_DIR holds config.json)" >&2
  exit 2
fi
model_dir="$1"
shift
if grep -q '"auto_map"' "$model_dir/config.json"; then
  echo "$0: $model_dir is a DLM export (auto_map); vLLM serves only the AR export" >&2
  exit 2
fi

exec vllm serve "$model_dir" \
  --served-model-name "${SERVED_MODEL_NAME:-dcoder-ar}" \
  --host "${VLLM_HOST:-127.0.0.1}" \
  --port "${VLLM_PORT:-8001}" \
  --dtype "${VLLM_DTYPE:-auto}" \
  "$@"
