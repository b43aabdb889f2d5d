"""Synthetic clips with exact ground truth (frames, depth, poses, flow, masks, tracks): an input
source for `gflow synth`, the demo, the benches and the tests, which evaluation scores against."""
