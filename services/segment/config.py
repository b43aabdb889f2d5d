"""How the segment stage computes: its configuration, apart from the engine so a caller that only
names a segment run (the pipeline, a remote-only `gflow run`) does not load it."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.segment.refine import MaskRefineConfig


@dataclass
class SegmentConfig:
    """How flow residuals become moving-object masks. Defaults suit DIS flow at 854x480."""

    threshold: float = 1.0
    """Flow residual in px at which a pixel scores 0.5 and counts as moving. The residual is the
    distance of the flow end point from what camera motion allows: sqrt(2) x Sampson distance to
    F (about the distance to the epipolar line), homography transfer error, flow length for a
    still camera, transfer error of the depth-aware model."""
    noise_sigmas: float = 3.0
    """The threshold rises to this many robust standard deviations of the frame's background
    residual when the flow is noisier than threshold / noise_sigmas (also the noise floor that
    GRIC model selection assumes)."""
    fb_threshold_px: float = 1.0
    """Forward-backward error in px below which a pixel's flow is trusted for model fitting."""
    min_consistent_share: float = 0.05
    """Fewer forward-backward consistent pixels than this share: no model is fitted
    (degenerate 'no_consistent_pixels'); the frame takes its reliable neighbours' masks where it
    has any, else stays empty."""
    max_moving_share: float = 0.5
    """More of the consistent pixels off the camera model by more than `threshold` than this
    share: camera motion cannot be told from object motion (degenerate 'mostly_moving'; no noise
    adaptation); the frame takes its reliable neighbours' masks where it has any."""
    static_camera_flow_px: float = 0.5
    """Median consistent flow length in px below which the camera counts as still: every pixel
    that moves is moving, the residual is the flow length."""
    max_fit_points: int = 2000
    """Consistent pixels sampled (deterministically) for model fitting and selection."""
    morph_open_px: int = 1
    """Radius of the opening that removes specks (0: off)."""
    morph_close_px: int = 2
    """Radius of the closing that fills small holes (0: off)."""
    measured_depth_only: bool = True
    """Skip the depth parallax check on frames without measured depth (the depth stage's
    confidence below `MEASURED_DEPTH_CONFIDENCE`, services/depth/config.py: the offline
    backend's smooth prior where the camera barely translates). Checked against that made-up
    depth, still background scores as moving (pan / static clips of the accuracy suite,
    256x192x24: J of the scores 0.52 / 0.51, 0.92 / 0.96 with this; docs/segment.md, Limits,
    "The parallax check on a still camera flags whole rows"). False: checked on every frame."""
    temporal_smoothing: bool = True
    """Majority vote of each pixel with the previous and next masks warped by flow; scores take
    the median of the three."""
    refine: MaskRefineConfig = field(default_factory=MaskRefineConfig)
    """Edge-aware refinement by the image and temporal support of components (needs the frames;
    see services/segment/refine.py)."""
    score_margin_px: int = 1
    """Pixels by which the moving scores handed on (what the fit reads as its moving prior)
    reach beyond the masks: each score raised to the highest within this many pixels, the masks
    as they are. Estimated masks miss an object's rim where the flow smears, and the fit then
    holds the rim's Gaussians still; 1 takes back the PSNR the flow's polish costs (docs/fit.md,
    "A set of opt-ins that lowers no figure", now the defaults). 0: off. Masks the user gives are
    handed on as they are."""
    seed: int = 0
    """Seed for point sampling and the robust estimators, so results are deterministic (OpenCV's
    global RNG is reseeded before each F / H fit)."""
