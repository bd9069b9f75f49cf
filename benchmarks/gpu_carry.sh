#!/bin/bash
# Build .gpu/, what one call of the lent GPU machine carries for `benchmarks/gpu_sweep.sh` (at most 64 MiB with
# the working tree; README, "The gpu recipe on a GPU"): the validated faces packed losslessly (56 MB for the
# three-split file), the Python packages the machine lacks as one xz tarball (7.9 MB), and a git bundle of HEAD
# so that the runs are tagged with the real commit.
#
#   benchmarks/gpu_carry.sh PIPELINE/data/processed/clean.npz
#
# The machine has Python 3.12 with JAX, numpy, pandas, scikit-learn and matplotlib, but not Keras, MLflow or
# pydantic. Two cuts keep the tarball small enough to travel beside the faces: the Databricks SDK (MLflow
# imports only its top package here) and SQLAlchemy's compiled speed-ups (it falls back to their Python
# sources) are left out, and `cryptography`, which MLflow's registry store imports for webhook secrets that
# ferflow never sets, is replaced by a stand-in that refuses to encrypt.
set -euo pipefail
clean=${1:?usage: $0 PIPELINE/data/processed/clean.npz}
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu
wheels=$(mktemp -d) site=$(mktemp -d)
pins=(keras namex optree mlflow-skinny mlflow-tracing sqlalchemy alembic mako pydantic pydantic-core annotated-types
      typing-inspection typing-extensions cachetools fastapi starlette gitpython gitdb smmap importlib-metadata
      opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions sqlparse)
for name in "${pins[@]}"; do
  pinned=$(grep -i "^$name==" requirements.lock | head -1 || true)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$wheels" "${pinned:-$name}"
done
for wheel in "$wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$site"; done
find "$site" -name '__pycache__' -prune -exec rm -rf {} +
find "$site/sqlalchemy" -name '*.so' -delete
mkdir -p "$site/databricks" "$site/cryptography"
touch "$site/databricks/__init__.py"
cat > "$site/cryptography/__init__.py" <<'PY'
"""Stand-in for the lent GPU machine only (benchmarks/gpu_carry.sh): MLflow's registry store imports
cryptography.fernet for webhook secrets, which ferflow never sets."""
PY
cat > "$site/cryptography/fernet.py" <<'PY'
import base64
import os


class Fernet:
    """Holds a key; encrypting or decrypting a webhook secret is refused."""

    def __init__(self, key, *args, **kwargs):
        self._key = key

    @staticmethod
    def generate_key() -> bytes:
        return base64.urlsafe_b64encode(os.urandom(32))

    def encrypt(self, data):
        raise RuntimeError("cryptography is a stand-in on this machine: MLflow webhook secrets are unavailable")

    decrypt = encrypt
PY
tar cf - -C "$site" . | xz -9e -T2 > .gpu/site.tar.xz
rm -rf "$wheels" "$site"
git bundle create .gpu/repo.bundle HEAD
"${PYTHON:-.venv/bin/python}" benchmarks/gpu_device.py pack "$clean" .gpu
cp benchmarks/gpu_sweep.sh .gpu/run.sh
du -cb .gpu/* | tail -1
