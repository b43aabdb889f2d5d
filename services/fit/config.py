"""Fitting configuration: one dataclass with the original GFlow's defaults, and named presets.

Every field is a command-line flag (tyro) and a JSON field of a Fit request. `preset("fast")` trades
quality for speed; `preset("test")` is tiny, for CPU unit tests at 64x48. `FitRuntime` (device,
renderer, compiled loss code) says how the fit runs: never in the content key, never in a request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from services.common.config import check_choices, with_settings
from services.common.errors import InvalidArgumentError

TrackMotion = Literal["gaussian", "local_rigid", "local_affine"]
"""How a track's point moves (services/fit/tracks.py)."""


@dataclass
class FitConfig:
    """How the GFlow engine fits Gaussians and cameras to a clip and its priors."""

    init_points: int = 60_000
    """Gaussians placed on the first frame (at most one per pixel), as the original's 60k."""
    max_points: int = 500_000
    """Upper bound on Gaussians alive at once, a memory guard: densification stops adding
    beyond it (with a warning), and from then on new content stays uncovered. fit_bench's
    854x480x50 clip ends at about 210k (default) and 130k (fast); the former caps of 100k / 50k
    cost it 3-4 dB of PSNR (docs/fit.md, "The Gaussian cap")."""
    texture_share: float = 0.7
    """Share of first-frame samples drawn in proportion to image gradient (the rest uniform)."""
    init_opacity: float = 0.8
    """Opacity of a new Gaussian."""

    iters_first: int = 500
    """Optimisation iterations on the first frame."""
    iters: int = 300
    """Optimisation iterations on each later frame."""
    camera_iters: int = 150
    """Camera pose iterations on each later frame (against the still part), at most."""
    camera_patience: int = 0
    """Every this many camera iterations, stop the refinement if no iteration since the last
    check (or since the start pose) lowered its loss; 0 runs all `camera_iters`. The pose kept is
    the lowest-loss one either way, so only a stalled refinement stops early; each check waits
    for the GPU once. 20 brought fit_bench's fast preset to 0.45-0.48 s/frame and default to
    1.26 on an H200 with the former Gaussian caps (exact priors: the start pose is mostly the
    best) but changes one frame of the accuracy suite, so it is off by default (docs/fit.md,
    "Camera refinement that stops when it stalls")."""
    lr_first: float = 4e-3
    """Learning rate of the Gaussians on the first frame (means scaled by the scene depth)."""
    lr: float = 1e-3
    """Learning rate of the Gaussians on later frames."""
    camera_lr: float = 5e-4
    """Learning rate of the camera pose (axis-angle radians, translation in scene depths)."""

    lambda_rgb: float = 1.0
    """Weight of the photometric term (L2 plus `ssim_share` of 1 - SSIM)."""
    ssim_share: float = 0.2
    """Share of (1 - SSIM) in the photometric term; the rest is L2."""
    lambda_depth: float = 1e-4
    """Weight of the L1 term between rendered and prior depth (prior depth units)."""
    lambda_flow: float = 1e-2
    """Weight of the flow term on moving Gaussians (pixels between projected centre and flow)."""
    lambda_camera_flow: float = 1e-2
    """Weight of the camera refinement's reprojection term (pixels between the still flow
    correspondences' world points and their flow targets), apart from `lambda_flow`: the camera
    of a still or panning clip leans on it (docs/fit.md, "The flow's two weights")."""
    lambda_still: float = 10.0
    """Weight of the term keeping still Gaussians where they were (squared displacement in units
    of one pixel's footprint at the median depth of frame 0)."""
    lambda_isotropic: float = 10.0
    """Weight of the term pulling each Gaussian's three scales together (the mean absolute
    deviation of its log scales). 0.1 gave 7.6-12.7 dB more PSNR on an 854x480 clip, AJ -0.02 to
    +0.11, and sharper views from beside the fitted cameras; 0.1-0.3 is about the original GFlow's
    strength for this term (docs/fit.md, "The isotropic term's weight")."""

    densify_every: int = 100
    """Iterations between densification passes within a frame (the first pass is at iteration 0
    of every later frame); 0 = only that first pass."""
    densify_error: float = 0.1
    """Mean absolute RGB error (0..1) above which a pixel is an error region; it gets a Gaussian."""
    densify_alpha: float = 0.5
    """Rendered opacity below which a pixel is uncovered (new content) and gets a Gaussian."""
    densify_max: int = 8_000
    """Most Gaussians one densification pass adds."""
    prune_opacity: float = 0.005
    """Gaussians fainter than this are removed at the end of each frame."""
    keep_adam_state: bool = False
    """Carry Adam's moments of each Gaussian across densification passes and frames (new
    Gaussians start from zero) instead of a fresh optimiser each time, whose first steps shake
    every Gaussian by about its learning rate: the loss falls steadily, PSNR is higher at the same
    step count (docs/fit.md, "Adam's state across densification and frames"). In `--best-tracks`;
    not the default because some figures of the accuracy suite drop (moving pipeline cameras on
    the CPU, PSNR at 854x480 on the GPU: docs/fit.md, "Adam's first steps from fresh moments")."""

    rescale_depth_prior: bool = True
    """Re-estimate each frame's depth-prior scale from the model (median rendered still depth over
    the prior), for priors whose scale changes from frame to frame. False keeps frame 0's scale (1:
    the model is built from that frame's prior), for priors with one scale over the clip (exact, or
    the offline depth stage's global alignment): the depth term and new Gaussians then hold the
    model's scale instead of following its drift (docs/fit.md, "The depth prior's scale")."""

    camera_depth: Literal["prior", "model"] = "prior"
    """Depth at which the camera lifts frame t-1's still pixels to the world points of its PnP
    and reprojection term: "prior" = the depth prior at the model's scale; "model" = the still
    Gaussians' rendered depth at frame t-1's pose once that frame is finished, where they
    cover the pixel and the prior departs from it by more than `camera.MODEL_DEPTH_TOLERANCE`
    (the prior elsewhere): the camera is tracked against the model's one map rather than each
    frame's own estimate. Through the offline depth backend at 96x72 that brings the accuracy
    suite's orbit camera from 4.7 % to 1.9 % of its path, but not every figure of the suite up
    (at 256x192 on the GPU a first version cost orbit-nonrigid's and orbit-3-leaving's cameras),
    and the PnP no longer overlaps the previous frame's optimisation: opt-in (docs/fit.md,
    "Cameras tracked against the model's depth")."""

    camera_from_prior_poses: bool = True
    """Take the priors' camera poses (the depth stage's `c2w`) as the fit's cameras, frame for
    frame, instead of the PnP start and the photometric refinement; where the priors hold no
    poses the fit finds its own as usual. For a depth stage whose poses are better than the
    fit's tracking: the offline backend's bundle adjustment (`offline_bundle_adjust`), whose
    poses the refinement walks away from (docs/fit.md, "Keeping a bundle-adjusted depth stage's
    cameras"). Its chained poses without the adjustment are worse than the fit's own, and the
    MASt3R backend's have not been measured against them: False lets the fit track its own."""

    moving_depth_from_filled_prior: bool = False
    """A moving Gaussian's camera z follows the depth prior's change along its flow also where
    the prior was filled in rather than measured (confidence below `MEASURED_DEPTH_CONFIDENCE`
    of services/depth/config.py: the offline depth backend fills every moving object from
    its surroundings). False keeps such a Gaussian at the z its unmoved centre has in the new
    camera: through the offline backend that raises occlusion accuracy and PSNR on moving-camera
    clips (docs/fit.md, "Moving depth where the prior was filled in"). Priors without a
    confidence are unaffected."""

    moving_behind_occluders: bool = False
    """Moving Gaussians that pass behind a nearer surface keep their own depth and motion: one
    hidden at its flow target (the flow's round trip fails there) keeps its camera z where the
    prior's depth there is an occluder's (`motion.OCCLUDER_DEPTH_RATIO`), and one no pixel sees
    moves with the moving Gaussians around it that do not lie in front of it. Without it both
    follow the occluder (one object passing in front of another takes the other's Gaussians
    along). On the accuracy suite's clip of crossing objects (orbit-3-leaving, exact priors) AJ
    +0.016 and occlusion accuracy +0.016, but 26 other figures of the CPU suite are lower, so it
    is opt-in (docs/fit.md, "Moving Gaussians behind an occluder")."""

    mask_threshold: float = 0.5
    """Moving-mask score at or above which a pixel counts as moving."""
    moving_mask_margin_px: int = 0
    """Pixels by which the fit widens the moving masks it is given (each score raised to the
    highest within this many pixels) before it reads them: Gaussians on an object's rim then
    move with it instead of being held where they were as still ones. For estimated masks and
    flow a user brings (the pipeline's segment stage widens its own scores: its
    `score_margin_px`): with `--best-tracks` on the accuracy suite's pipeline rows 1 adds 0.7-1.4
    dB PSNR on every clip, costs the fit's own masks 0.01-0.13 J and leaves the tracks where they
    were; exact masks lose by it, so 0 = off (docs/fit.md, "A margin around the moving masks")."""
    cluster_min_motion_px: float = 0.5
    """Below this gap between the two k-means centres (pixels of residual motion) the displacement
    carries no evidence and the masks alone decide still/moving."""
    cluster_mask_keeps: float = 0.75
    """With the cameras kept from the priors' poses (`camera_from_prior_poses`, poses given): the
    mask score (mean of a Gaussian's pixel in the previous frame and where the flow puts it) from
    which a Gaussian stays in the moving set whatever its residual motion, so the motion may add
    moving Gaussians the masks missed but not overrule them. Kept cameras come with the depth
    stage's filled-in depth on moving objects, at which their residual motion shrinks towards the
    still part's (orbit-nonrigid: 0.4-1.2 px against 0.1-0.2 px); the split then dropped most of a
    deforming object (docs/fit.md, "Masks the kept cameras' split keeps"). Above 1: never. Fits
    that track their own cameras do not use it."""

    track_motion: TrackMotion = "local_rigid"
    """How a query's point moves in the tracks the fit writes: local_rigid, a query on a moving
    Gaussian with the rigid motion of the 16 moving Gaussians around it wherever a turn explains
    their motion (so it turns with a spinning object), else as gaussian; gaussian, with the
    centre of the Gaussian under it (a fixed world offset), the readout before stop 28. On the
    accuracy suite local_rigid raises exact-prior AJ by up to 0.08 and lowers no figure
    (docs/fit.md, "Tracks that turn with the object"); local_affine, as local_rigid, and in the
    frames where one affine map of the image carries the 16 moving Gaussians around the query
    (their centres' pixels), the query's pixel goes where that map puts it, at local_rigid's depth:
    with exact priors AJ +0.02-0.05 on every clip of the suite, through DIS flow a few rows lose
    up to 0.007, so it is opt-in (docs/fit.md, "Tracks that follow the image motion around them").
    Occlusion flags are the same in all three."""
    occlusion_from_frames: bool = True
    """Tracks: a point the model reports hidden (behind or off its rendered surface) counts as
    visible where the frame shows the query's colours there (`tracks.APPEARANCE_MATCH_LEVELS`).
    On the CPU accuracy suite it raises occlusion accuracy on 8 rows (pipeline up to +0.09) and AJ
    on 7 (pipeline up to +0.030) and lowers none (docs/fit.md, "Occlusion flags the frames
    confirm"). False: the model's depth order alone."""
    occlusion_from_flow_where_unmeasured: bool = True
    """Tracks: in a frame whose depth prior measured no pixel (the offline depth backend's smooth
    prior everywhere: a camera that turns or stays), a point the model reports hidden counts as
    hidden only where the flow's forward-backward check fails at it too: which Gaussian lies in
    front there is the filler's guess (tracks.FlowCheck). Priors without backward flow are
    unaffected (docs/fit.md, "Occlusion where the depth prior measured nothing")."""
    tracks_with_flow_chain: bool = True
    """Tracks: where the flow, chained from the query with every round trip holding (the accuracy
    suite's floor tracker), reaches within `tracks.FLOW_CHAIN_AGREEMENT_PX` of the track point,
    two trackers whose errors differ agree: the point counts as visible whatever the model's
    depth order says. Where the chain holds, a query on a moving Gaussian is reported at the
    chain's point, one on a still Gaussian midway between the two where they lie within
    `tracks.FLOW_CHAIN_MIDWAY_PX` (tracks.FlowChain). Priors without backward flow are
    unaffected (docs/fit.md, "Tracks the chained flow confirms", "Moving points from the
    chain")."""
    tracks_chain_inside_masks: bool = True
    """Tracks: where the priors' moving masks are hard (every score 0 or 1: exact masks, or the
    user's), a query on a moving Gaussian follows flow read from inside them, both flows of each
    round trip (tracks.FlowChain): a bilinear read at an object's outline blends the
    background's flow into the object's, and the chained point lags off the object. With exact
    priors on the accuracy suite's CPU fits AJ rises by 0.04-0.09; the segment stage's soft
    scores and its own masks are not read inside (reading inside them lowered pipeline figures;
    docs/fit.md, "Moving chains read inside hard masks"). Then the points reported read the flow
    on the masks' outline to first order, and a moving query whose chain held and then failed a
    round trip is carried through the occlusion by its object's visible part, hidden where the
    flow does not show it (docs/fit.md, "Moving chains read to first order on a hard mask's
    outline", "Moving points carried through occlusions"). False: the flow read plainly."""
    tracks_moving_by_mask: bool = True
    """Tracks: a query whose pixel the priors' moving mask surely covers (score at or above
    `tracks.MASK_SURE_SCORE`) but a still Gaussian dominates attaches to the moving Gaussian of
    largest blending weight there, at its depth: at an object's rim the still Gaussians behind
    it often outweigh the moving ones, and a query attached to one of them stays put while the
    object moves on. On the accuracy suite's CPU fits it raises exact-prior AJ by up to 0.02 and
    lowers no figure (under `--best-tracks` two pipeline rows lose up to 0.0015: docs/fit.md,
    "Queries the moving mask covers"). False: the dominant Gaussian, whatever the mask says."""
    tracks_chain_neighbour_px: int = 4
    """Tracks: where the priors' moving masks are soft (the segment stage's scores), the chained
    flow's points come from the flow each pixel takes from a neighbour up to this many pixels
    away where that matches the frames better (services/flow/polish.py, `take_neighbour_flow`):
    DIS blends an object's flow with the background's along its outline, and points chained
    there lag. Where the chain holds and whether it lands on the model's point are still read
    from the flow as given, so no occlusion flag changes. Through DIS flow on the CPU suite AJ
    rises on every pipeline row (docs/fit.md, "Chained points from the flow taken from a
    neighbour"); on exact flow it only errs, so hard masks turn it off, and `gflow run` turns it
    off for a learned flow backend or a flow stage that took the neighbours' flow itself
    (PipelineConfig.fit_config). 0: off."""

    checkpoint_every: int = 5
    """Frames between checkpoints (when a checkpoint sink is given)."""
    seed: int = 0
    """Seed of every random choice; the same seed, inputs and device give the same result."""

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field."""
        check_choices(self)
        positive = ("init_points", "max_points", "iters_first", "checkpoint_every", "densify_max")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidArgumentError(name, f"{getattr(self, name)} must be at least 1")
        for name in (
            "iters",
            "camera_iters",
            "camera_patience",
            "densify_every",
            "moving_mask_margin_px",
            "tracks_chain_neighbour_px",
        ):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(name, f"{getattr(self, name)} must be >= 0")
        if self.max_points < self.init_points:
            raise InvalidArgumentError("max_points", f"{self.max_points} is below init_points")
        for name in ("texture_share", "ssim_share", "mask_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidArgumentError(name, f"{getattr(self, name)} is outside 0..1")
        if not self.cluster_mask_keeps >= 0.0:  # NaN too
            raise InvalidArgumentError(
                "cluster_mask_keeps", f"{self.cluster_mask_keeps} must be >= 0 (above 1: never)"
            )
        if not 0.0 < self.init_opacity < 1.0:
            raise InvalidArgumentError("init_opacity", f"{self.init_opacity} is outside (0, 1)")
        for name in ("lr_first", "lr", "camera_lr"):
            if getattr(self, name) <= 0:
                raise InvalidArgumentError(name, f"{getattr(self, name)} must be positive")


@dataclass(frozen=True)
class FitRuntime:
    """Where the fit runs and which renderer draws it. Never in the content key: a result is
    stored once whichever device made it (a checkpoint resumes only on the device and renderer
    that wrote it)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available, else cpu."""
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    """Renderer: gsplat (CUDA), the PyTorch rasteriser, or auto (gsplat on CUDA when installed)."""
    compile: bool = False
    """Fuse each step's loss code with torch.compile when fitting on CUDA (fewer kernel launches:
    a step is host-bound there; about 40 % less time per frame, the same accuracy over nine
    seeds); the CPU always runs it eagerly. Off by default: compiling takes 65-115 s once per
    process, which one short clip does not win back; a long-lived fit server does (docs/fit.md,
    "Compiling the loss code")."""

    def __post_init__(self) -> None:
        check_choices(self)

    def compiles_on(self, device_type: str) -> bool:
        """Whether the loss code is compiled for a fit on this device type ("cuda", "cpu")."""
        return self.compile and device_type == "cuda"


PRESETS: dict[str, FitConfig] = {
    "default": FitConfig(),
    "fast": FitConfig(
        init_points=20_000,
        max_points=250_000,
        iters_first=200,
        iters=80,
        camera_iters=50,
        lr_first=8e-3,
        lr=3e-3,
        camera_lr=1e-3,
        densify_every=40,
        densify_max=3_000,
    ),
    "test": FitConfig(
        init_points=1_500,
        max_points=3_000,
        iters_first=60,
        iters=30,
        camera_iters=10,
        lr_first=1e-2,
        lr=5e-3,
        camera_lr=5e-4,
        densify_every=0,
        densify_max=300,
        checkpoint_every=2,
    ),
}


def preset(name: str) -> FitConfig:
    """A fresh copy of a named configuration: default, fast or test."""
    if name not in PRESETS:
        raise InvalidArgumentError("preset", f"{name!r} is unknown; use one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def preset_with(name: str, settings: tuple[str, ...], seed: int) -> FitConfig:
    """The named preset with the name=value `settings` applied (`with_settings`, flag "set")
    and the fit seed."""
    return dataclasses.replace(with_settings(preset(name), settings, "set"), seed=seed)
