# syntax=docker/dockerfile:1
# GFlow depth service: MASt3R (with its dust3r and croco parts, from their repositories at pinned
# commits) and the offline backend that needs no weights. The checkpoint is mounted read-only at
# /weights, never baked in. Build from the repository root:
#   docker build -f deploy/docker/depth.Dockerfile -t gflow-depth .                        # CUDA
#   docker build -f deploy/docker/depth.Dockerfile --build-arg VARIANT=cpu -t gflow-depth:cpu .
# MASt3R, DUSt3R and CroCo code and checkpoints are licensed CC BY-NC-SA 4.0 (non-commercial).
ARG VARIANT=cuda
ARG CPU_IMAGE=ubuntu:24.04
# The CPU builder's base; deploy/lab/ builds one with the dependencies installed (same distro).
ARG CPU_BUILDER_IMAGE=${CPU_IMAGE}
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The CUDA builder needs nvcc to compile CroCo's RoPE kernels (curope).
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04

# ---- builder: venv with the project, MASt3R at pinned commits ---------------------------------
FROM ${CUDA_DEVEL_IMAGE} AS builder-cuda
FROM ${CPU_BUILDER_IMAGE} AS builder-cpu
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder
ARG VARIANT
# torch stays at the project's pin; only its build (CPU or CUDA channel) follows VARIANT.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_CUDA_CHANNEL=cu128
# naver/mast3r and the submodule commits that commit records (checked below).
ARG MAST3R_COMMIT=f5209afc300cec36239a7ac992263f36847bbba0
ARG DUST3R_COMMIT=3cc8c88c413bb9e34c41db0e0eef99c2ee010b12
ARG CROCO_COMMIT=d7de0705845239092414480bd829228723bf20de
# GPU architectures the CUDA kernels are compiled for (there is no GPU to detect at build time):
# Turing, Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper, Blackwell consumer, plus PTX.
ARG CUDA_ARCHS="7.5;8.0;8.6;8.9;9.0;12.0+PTX"
COPY deploy/docker/install-python.sh deploy/docker/build-venv.sh /tmp/
RUN /tmp/install-python.sh git python3-dev g++
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY services services
# MASt3R's runtime imports, without the demo/training extras (gradio, tensorboard, pyglet) and
# without opencv-python, which would clash with the project's opencv-python-headless.
RUN /tmp/build-venv.sh && /opt/venv/bin/pip install --no-cache-dir \
    "roma>=1.5,<2" "einops>=0.7,<1" "trimesh>=4,<5" "scikit-learn>=1.4,<2" \
    "huggingface-hub>=0.22,<2" "matplotlib>=3.8,<4" "setuptools>=68"
# MAST3R_COMMIT=none leaves MASt3R out (where GitHub is unreachable; the backend then reports
# unavailable in Describe).
RUN if [ "$MAST3R_COMMIT" = none ]; then mkdir -p /opt/mast3r/dust3r/croco/models/curope; else \
    git clone --quiet https://github.com/naver/mast3r /opt/mast3r \
    && git -C /opt/mast3r checkout --quiet --detach "$MAST3R_COMMIT" \
    && git -C /opt/mast3r submodule update --quiet --init --recursive \
    && test "$(git -C /opt/mast3r/dust3r rev-parse HEAD)" = "$DUST3R_COMMIT" \
    && test "$(git -C /opt/mast3r/dust3r/croco rev-parse HEAD)" = "$CROCO_COMMIT" \
    && find /opt/mast3r -name .git -prune -exec rm -rf {} +; fi
# CroCo's CUDA RoPE kernels (optional: without them MASt3R falls back to a slower PyTorch RoPE).
WORKDIR /opt/mast3r/dust3r/croco/models/curope
RUN if [ "$VARIANT" = cuda ]; then TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS" \
        /opt/venv/bin/python setup.py build_ext --inplace && rm -rf build; fi

# ---- runtime ----------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
FROM ${CPU_IMAGE} AS runtime-cpu
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
LABEL org.opencontainers.image.title="gflow-depth" \
      org.opencontainers.image.description="GFlow depth service (gRPC): MASt3R and offline depth"
COPY deploy/docker/install-python.sh /tmp/
RUN /tmp/install-python.sh && rm /tmp/install-python.sh \
    && useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin gflow
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/mast3r /opt/mast3r
COPY deploy/docker/entrypoint.sh deploy/docker/check_weights.py deploy/docker/healthcheck.py \
     /opt/gflow/
# mast3r imports dust3r, which puts croco on sys.path itself. HF_HUB_OFFLINE: nothing is fetched.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/mast3r:/opt/mast3r/dust3r \
    HF_HUB_OFFLINE=1 \
    GFLOW_STAGE=depth \
    GFLOW_PORT=50051 \
    GFLOW_MAST3R_CHECKPOINT=/weights/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth
USER 10001
WORKDIR /home/gflow
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/gflow/healthcheck.py"]
ENTRYPOINT ["tini", "--", "/opt/gflow/entrypoint.sh"]
CMD ["--host", "0.0.0.0"]
