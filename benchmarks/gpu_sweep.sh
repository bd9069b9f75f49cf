#!/bin/bash
# On the lent GPU machine, with .gpu/ from benchmarks/gpu_carry.sh carried: unpack, then `gpu_device.py sweep`.
# The device tool's call: command `bash .gpu/run.sh`, carry [".gpu"], timeout_s 570. Everything is done by
# ALLOWED_S seconds (default 510); VARIANTS names the sweep file, RESERVE_S the seconds kept after training.
set -uo pipefail
START=$(date +%s); DEADLINE=$((START + ${ALLOWED_S:-510}))
cd "$(dirname "$0")/.."
exec > >(tee -a "$OUT/driver.log") 2>&1
nvidia-smi -L || true
mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site || exit 1
rm -rf /tmp/repo && git clone -q .gpu/repo.bundle /tmp/repo && export GIT_DIR=/tmp/repo/.git && git rev-parse HEAD \
  || echo "no git: runs are tagged with commit unknown"
export PYTHONPATH=/tmp/site:$PWD/src KERAS_BACKEND=jax PYTHONUNBUFFERED=1
python3 -c "import jax, keras, mlflow; print(jax.devices(), keras.__version__, mlflow.__version__)" || exit 1
python3 benchmarks/gpu_device.py unpack .gpu/clean-meta.npz /tmp/clean.npz .gpu/images.xz.1 .gpu/images.xz.2 || exit 1
python3 benchmarks/gpu_device.py sweep "${VARIANTS:-benchmarks/gpu_variants.yaml}" /tmp/clean.npz /tmp/sweep \
  --out "$OUT" --deadline "$DEADLINE" --reserve "${RESERVE_S:-150}"
echo "total $(( $(date +%s) - START )) s"
