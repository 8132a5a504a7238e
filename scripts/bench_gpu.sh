#!/usr/bin/env bash
# GPU rows of BENCHMARKS.md (issue 9): ONNX Runtime's CUDA provider, for the shipped bundle and a random gato-79m,
# with the KV cache in GPU memory (CuPy) and in host memory (copied to the GPU on every call); then their fp16
# variants (`gato-ros export --precision fp16`: weights, activations and cache in half precision), and with
# EVAL=1 the fp16 bundle's closed-loop success on the GPU (parity with fp32: within 5 points).
#
#   scripts/bench_gpu.sh              # needs onnxruntime-gpu (CUDA provider), CuPy, and torch for the 79m export
#   (the lent H200's image has CuPy and torch but only the CPU onnxruntime: scripts/ort_gpu_parts.sh carries it)
#
# First a parity check: the same observations through the CPU provider and the CUDA provider must give the same
# action tokens (greedy). Writes one JSON file per row to $OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT_DIR=${OUT_DIR:-runs/bench_gpu}
TICKS=${TICKS:-300}
BIG=${BIG:-/tmp/gato-79m-random}
SMALL16=${SMALL16:-/tmp/gato_arm_small_fp16}
BIG16=${BIG16:-/tmp/gato-79m-random-fp16}
mkdir -p "$OUT_DIR"

$PY - <<'EOF'
import json, sys
import numpy as np
import onnxruntime as ort
from gato_ros.runtime import RuntimePolicy

print("onnxruntime", ort.__version__, ort.get_available_providers(), flush=True)
rng = np.random.default_rng(0)
obs = [{"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "joint_pos": rng.uniform(-1, 1, 7), "joint_vel": rng.uniform(-0.2, 0.2, 7)} for _ in range(8)]
out = {}
for name, ep, kv in (("cpu", "cpu", "cpu"), ("cuda_kv_gpu", "cuda", "cuda"), ("cuda_kv_host", "cuda", "cpu")):
    p = RuntimePolicy.load("models/gato_arm_small", execution_provider=ep, kv_device=kv)
    assert p.provider == ("CPUExecutionProvider" if ep == "cpu" else "CUDAExecutionProvider"), p.provider
    acts = []
    texts = ["reach the red cube", "put the blue ball in the green bowl", "reach the yellow cylinder"]
    for ep_i in range(3):  # three episodes, 40 ticks each (wraps the 4-step ring many times)
        p.set_instruction(texts[ep_i])
        for t in range(40):
            acts.append(p.act(obs[(t * 3 + ep_i) % 8]))
    out[name] = np.stack(acts)
for name in ("cuda_kv_gpu", "cuda_kv_host"):
    same = np.all(np.isclose(out[name], out["cpu"], atol=1e-9), axis=1)
    res = {"parity": name, "ticks": len(same), "identical_ticks": int(same.sum()),
           "max_abs_diff_rad": float(np.abs(out[name] - out["cpu"]).max())}
    print(json.dumps(res), flush=True)
EOF

bench() {  # NAME ARGS...
  local name=$1; shift
  $PY -m gato_ros.cli bench --no-peers --ticks "$TICKS" --json "$@" > "$OUT_DIR/$name.json"
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], json.dumps({k: r[k] for k in \
('model','provider','kv_cache','graph_calls_per_tick','tick_ms','breakdown_ms','bound_ms','bound_fraction')}))" \
    "$OUT_DIR/$name.json" "$name"
}
bench small_cuda_kvgpu --model models/gato_arm_small --execution-provider cuda --kv-device cuda
bench small_cuda_kvhost --model models/gato_arm_small --execution-provider cuda --kv-device cpu
if [ ! -f "$BIG/gato.json" ]; then
  $PY -c "import sys; from pathlib import Path; from gato_ros.bench import export_random; \
export_random('gato-79m', Path(sys.argv[1]))" "$BIG"
fi
bench 79m_cuda_kvgpu --model "$BIG" --execution-provider cuda --kv-device cuda
bench 79m_cuda_kvhost --model "$BIG" --execution-provider cuda --kv-device cpu
bench 79m_cuda_kvgpu_seq --model "$BIG" --execution-provider cuda --kv-device cuda --sequential
bench 79m_cuda_kvgpu_h1 --model "$BIG" --execution-provider cuda --kv-device cuda --history-steps 1

# fp16 variants: the shipped bundle's weights converted, and gato-79m with random weights
if [ ! -f "$SMALL16/gato.json" ]; then
  $PY -m gato_ros.cli export --checkpoint models/gato_arm_small/model.pt --out "$SMALL16" --precision fp16
fi
if [ ! -f "$BIG16/gato.json" ]; then
  $PY -c "import sys; from pathlib import Path; from gato_ros.bench import export_random; \
export_random('gato-79m', Path(sys.argv[1]), precision='fp16')" "$BIG16"
fi
bench small_fp16_cuda_kvgpu --model "$SMALL16" --execution-provider cuda --kv-device cuda
bench 79m_fp16_cuda_kvgpu --model "$BIG16" --execution-provider cuda --kv-device cuda
bench 79m_fp16_tensorrt_kvgpu --model "$BIG16" --execution-provider tensorrt --kv-device cuda
if [ "${EVAL:-0}" = 1 ]; then  # closed loop in the sim, on whatever provider `auto` picks (the GPU here)
  $PY -m gato_ros.cli eval --policy "$SMALL16" --episodes 100 --json > "$OUT_DIR/eval_small_fp16.json"
  $PY -m gato_ros.cli eval --policy models/gato_arm_small --episodes 100 --json > "$OUT_DIR/eval_small_fp32.json"
  tail -c 400 "$OUT_DIR"/eval_small_fp*.json
fi
