"""Flow backends, one module each, behind the `FlowBackend` protocol of `base`."""
