#!/usr/bin/env bash
# ONNX Runtime's CUDA provider for a lent GPU machine whose image has only the CPU onnxruntime (BENCHMARKS.md,
# 2026-12-01 fp16 section): its wheel (256 MB) is several times what one device call carries (64 MiB with the
# ~18 MB working tree; parts of 40 MiB leave room), so it travels in parts, one per call, to one warm machine,
# and is put together there. Not yet tried on a device (written 2026-12-01 without one).
#
#   scripts/ort_gpu_parts.sh split            # here: download the wheel and split it into .ortgpu/part.NN
#   then, one device call per part, back to back (the machine goes back after 30 s idle):
#     run(command="mkdir -p /tmp/ortgpu && cp .ortgpu/part.* /tmp/ortgpu/ && ls /tmp/ortgpu", carry=[".ortgpu/part.00"])
#     ... part.01, part.02, ...
#   scripts/ort_gpu_parts.sh install          # there, last call: check, unpack to /tmp/ortgpu/site, then e.g.
#     export PYTHONPATH=/tmp/ortgpu/site:$PWD && scripts/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${ORT_VERSION:-1.31.1}  # built against CUDA 13, as the H200 image's libraries are
PART_MB=${PART_MB:-40}
WHEEL=onnxruntime_gpu-$VERSION-cp312-cp312-manylinux_2_28_x86_64.whl

case "${1:-}" in
  split)
    mkdir -p .ortgpu
    grep -qx '/.ortgpu/' .gitignore || { echo "add /.ortgpu/ to .gitignore first" >&2; exit 1; }
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 -d .ortgpu "onnxruntime-gpu==$VERSION"
    rm -f .ortgpu/part.*
    split -b "${PART_MB}M" -d ".ortgpu/$WHEEL" .ortgpu/part.
    sha256sum ".ortgpu/$WHEEL" | awk '{print $1}' > .ortgpu/part.sha256
    rm ".ortgpu/$WHEEL"
    ls -la .ortgpu
    echo "carry one part per call (.ortgpu/part.00 first; .ortgpu/part.sha256 with the last)" >&2
    ;;
  install)
    cd /tmp/ortgpu
    cat part.[0-9]* > "$WHEEL"
    want=$(cat part.sha256 2>/dev/null || cat "$OLDPWD/.ortgpu/part.sha256")
    echo "$want  $WHEEL" | sha256sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortgpu/site "$WHEEL"
    PYTHONPATH=/tmp/ortgpu/site python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
