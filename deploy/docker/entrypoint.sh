#!/bin/sh
# Container entrypoint: say which model weights are missing (the service starts anyway: the
# offline depth and DIS flow backends need none), then become the stage's gRPC server.
# The stage comes from GFLOW_STAGE (set by each image); arguments are the server's flags.
set -eu
: "${GFLOW_STAGE:?set by the image: depth, flow, segment, fit or pipeline}"
python "$(dirname "$0")/check_weights.py" "$GFLOW_STAGE"
exec python -m "services.$GFLOW_STAGE.server" "$@"
