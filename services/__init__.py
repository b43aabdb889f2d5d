"""GFlow services: depth, flow, segmentation and fitting stages, and the pipeline around them."""

import os

# gRPC's fork handlers (on by default in grpcio 1.85) make a child forked while a server thread
# runs crash before its exec: ffmpeg, started per video by imageio while a call is served, died
# with a broken pipe in about 2 of 3 tries. We never use gRPC in a forked child, so they are off.
# This runs before anything here imports grpc, which reads the variable once, at import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
