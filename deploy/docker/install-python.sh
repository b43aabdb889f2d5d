#!/bin/sh
# Python 3.12 from Ubuntu 24.04 (the CPU and the CUDA images share this base, so a venv built in
# the builder stage runs unchanged in the runtime stage). Usage: install-python.sh [extra apt pkgs]
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
# libglib2.0-0t64: OpenCV's libgthread; tini: PID 1 that forwards SIGTERM (graceful drain).
apt-get install -y --no-install-recommends python3.12 python3.12-venv libglib2.0-0t64 tini \
    ca-certificates "$@"
rm -rf /var/lib/apt/lists/*
