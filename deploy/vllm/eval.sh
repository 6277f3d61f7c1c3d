#!/bin/bash
# Evaluate a model behind any OpenAI-compatible /v1/completions server (vLLM, `dcoder serve`)
# with dcoder's harness: the same tasks, sandbox and pass@k as the in-process evaluation.
#   VLLM_API_KEY=... deploy/vllm/eval.sh http://127.0.0.1:8001 --tasks humaneval,mbpp --out runs/eval/vllm-ar
# The key comes from VLLM_API_KEY (as for serve.sh) and reaches dcoder as DCODER_API_KEY, so it
# never shows on a command line.
# Not handled through vLLM: the infilling tasks (vLLM's /v1/completions does not support `suffix`);
# run them against `dcoder serve`, which answers `suffix` for both AR (FIM) and DLM models.
set -euo pipefail

if [ "$#" -lt 1 ]; then
  echo "usage: $0 http://HOST:PORT [dcoder eval args...]" >&2
  exit 2
fi
url="$1"
shift
if [ -n "${VLLM_API_KEY:-}" ]; then
  export DCODER_API_KEY="$VLLM_API_KEY"
fi

exec "${DCODER:-dcoder}" eval --model "$url" "$@"
