#!/bin/sh
# The distribution's Python 3 (Ubuntu 24.04: 3.12; Debian 12, the locally built base: 3.11). The
# builder and runtime stages share one base, so a venv built in the builder stage runs unchanged
# in the runtime stage. Usage: install-python.sh [extra apt pkgs]
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
# OpenCV's libgthread: libglib2.0-0t64 since Ubuntu 24.04, libglib2.0-0 before (Debian 12).
glib=libglib2.0-0t64
apt-cache show "$glib" >/dev/null 2>&1 || glib=libglib2.0-0
# tini: PID 1 that forwards SIGTERM (graceful drain).
apt-get install -y --no-install-recommends python3 python3-venv "$glib" tini ca-certificates "$@"
rm -rf /var/lib/apt/lists/*
