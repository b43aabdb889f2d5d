#!/bin/sh
# Build /opt/venv with the project installed, in the builder stage. Run from the source root.
#
# The project pins torch==2.13.0 (pyproject.toml). We keep that pin on every image and choose only
# the *build* of that version: the CPU wheel (VARIANT=cpu) or the CUDA wheel of the base image's
# CUDA (VARIANT=cuda, TORCH_CUDA_CHANNEL such as cu128), installed before `pip install .`. A local
# version such as 2.13.0+cu128 satisfies ==2.13.0, so pip keeps it; the check at the end fails the
# build if pip replaced it anyway.
#
# Env: VARIANT (cpu|cuda), TORCH_VERSION, TORCHVISION_VERSION, TORCH_CUDA_CHANNEL; optional
# TORCH_WHEEL_DIR: a folder holding the torch wheel to install instead of the PyTorch index (where
# that index is unreachable, as for the locally built images of deploy/lab/; torchvision is then
# left out unless an extra asks for PyPI's) and, when present, a pip constraints.txt that pins every
# dependency (torch included, so the wheel there is the one taken); optional PROJECT_EXTRAS: the
# project's extras to install with it (pyproject.toml), e.g. mast3r.
set -eu
: "${VARIANT:?cpu or cuda}" "${TORCH_VERSION:?}" "${TORCHVISION_VERSION:?}" "${TORCH_CUDA_CHANNEL:?}"
case "$VARIANT" in
    cpu) channel=cpu ;;
    cuda) channel="$TORCH_CUDA_CHANNEL" ;;
    *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;;
esac

python3 -m venv /opt/venv
export PATH="/opt/venv/bin:$PATH"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip install --upgrade pip
if [ -n "${TORCH_WHEEL_DIR:-}" ]; then
    if [ -f "$TORCH_WHEEL_DIR/constraints.txt" ]; then
        export PIP_CONSTRAINT="$TORCH_WHEEL_DIR/constraints.txt"
    fi
    pip install --find-links "$TORCH_WHEEL_DIR" "torch==$TORCH_VERSION"
else
    pip install --index-url "https://download.pytorch.org/whl/$channel" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# Generated stubs (package gflow.v1), exactly as `make proto` builds them.
pip install "grpcio-tools>=1.62,<2"
rm -rf gflow
python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. \
    proto/gflow/v1/*.proto
touch gflow/__init__.py gflow/v1/__init__.py
pip uninstall -y grpcio-tools

pip install ".${PROJECT_EXTRAS:+[$PROJECT_EXTRAS]}"

python - <<PY
import torch
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", f"torch {torch.__version__} replaced the pinned build"
assert ("$VARIANT" == "cuda") == (torch.version.cuda is not None), f"torch {torch.__version__} is not a $VARIANT build"
print("torch", torch.__version__, "cuda", torch.version.cuda)
PY
