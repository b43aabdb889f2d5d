"""Relative camera pose from two calibrated views: feature matches, essential matrix, recoverPose,
and the Sampson-distance polish the offline depth backend also runs on flow correspondences.

A simple, dependable baseline (SIFT or ORB, Lowe's ratio test, RANSAC on the essential matrix,
cheirality check) that the evaluation measures against real posed frames. The ground-truth
relative pose of two camera-to-world poses is `geometry.relative_pose_from_c2w`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from services.common.errors import InvalidArgumentError
from services.common.geometry import skew_33

logger = logging.getLogger(__name__)

MIN_MATCHES = 8  # fewest correspondences worth handing to the five-point RANSAC


@dataclass
class TwoViewConfig:
    """Settings of the two-view estimate; defaults suit 480p indoor frames."""

    features: Literal["sift", "orb"] = "sift"
    """Feature detector and descriptor."""
    max_features: int = 4000
    """Most keypoints detected per image."""
    sift_contrast_threshold: float = 0.005
    """SIFT's contrast threshold; OpenCV's 0.04 finds too few points on blurry indoor frames."""
    orb_fast_threshold: int = 5
    """ORB's FAST threshold (OpenCV's default 20 is too strict on low-texture frames)."""
    ratio: float = 0.8
    """Lowe's ratio test: keep a match when best distance < ratio * second best."""
    ransac_threshold_px: float = 1.0
    """Largest distance to the epipolar line for a RANSAC inlier, in pixels."""
    ransac_confidence: float = 0.999
    """RANSAC confidence."""
    refine: bool = True
    """Polish RANSAC's minimal-sample pose by least squares on the inliers' Sampson distances."""
    refine_scale_px: float = 0.5
    """Huber scale of that polish: residuals beyond it count linearly (robust to bad matches)."""


@dataclass
class TwoViewPose:
    """Pose of view b relative to view a: X_b = R_33 @ X_a + t_3, with |t_3| = 1."""

    R_33: np.ndarray  # float64
    t_3: np.ndarray  # float64 unit translation direction (scale is unobservable)
    n_matches: int  # matches that passed the ratio test
    n_inliers: int  # matches consistent with the essential matrix and in front of both cameras
    inliers_a_m2: np.ndarray  # float64 [M, 2] inlier pixels in image a
    inliers_b_m2: np.ndarray  # float64 [M, 2] matching pixels in image b


def _gray_u8(image: np.ndarray, field: str) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InvalidArgumentError(
            field, f"need a uint8 [H, W] or [H, W, 3] image, got {image.dtype} {image.shape}"
        )
    return image


def match_features(
    gray_a: np.ndarray, gray_b: np.ndarray, cfg: TwoViewConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-tested descriptor matches: pixel coordinates (pts_a [M, 2], pts_b [M, 2])."""
    if cfg.features == "sift":
        detector = cv2.SIFT_create(
            nfeatures=cfg.max_features, contrastThreshold=cfg.sift_contrast_threshold
        )
        norm = cv2.NORM_L2
    elif cfg.features == "orb":
        detector = cv2.ORB_create(nfeatures=cfg.max_features, fastThreshold=cfg.orb_fast_threshold)
        norm = cv2.NORM_HAMMING
    else:
        raise InvalidArgumentError("features", f"{cfg.features!r}: use sift or orb")
    kp_a, desc_a = detector.detectAndCompute(gray_a, None)
    kp_b, desc_b = detector.detectAndCompute(gray_b, None)
    empty = np.zeros((0, 2))
    if desc_a is None or desc_b is None or len(kp_a) < 2 or len(kp_b) < 2:
        return empty, empty
    pairs = cv2.BFMatcher(norm).knnMatch(desc_a, desc_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    pts_a = np.array([kp_a[m.queryIdx].pt for m in good], np.float64).reshape(-1, 2)
    pts_b = np.array([kp_b[m.trainIdx].pt for m in good], np.float64).reshape(-1, 2)
    return pts_a, pts_b


def sampson_px(
    R_33: np.ndarray, t_3: np.ndarray, pts_a_m2: np.ndarray, pts_b_m2: np.ndarray, K_33: np.ndarray
) -> np.ndarray:
    """First-order distance (pixels) of each match from the epipolar geometry of (R, t)."""
    K_inv = np.linalg.inv(K_33)
    F_33 = K_inv.T @ skew_33(t_3) @ R_33 @ K_inv
    xa = np.concatenate([pts_a_m2, np.ones((len(pts_a_m2), 1))], axis=1)
    xb = np.concatenate([pts_b_m2, np.ones((len(pts_b_m2), 1))], axis=1)
    Fxa, Ftxb = xa @ F_33.T, xb @ F_33
    den = np.sqrt(Fxa[:, 0] ** 2 + Fxa[:, 1] ** 2 + Ftxb[:, 0] ** 2 + Ftxb[:, 1] ** 2)
    return np.sum(xb * Fxa, axis=1) / np.maximum(den, 1e-12)


def refine_pose(
    R_33: np.ndarray,
    t_3: np.ndarray,
    pts_a_m2: np.ndarray,
    pts_b_m2: np.ndarray,
    K_33: np.ndarray,
    scale_px: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (Huber, `scale_px`) polish of (R, unit t) over Sampson distances.

    RANSAC keeps the best minimal-sample model, which with a 1 px threshold can be a degree off
    even on exact matches; this recovers the accuracy the matches carry.
    """
    t0 = t_3 / np.linalg.norm(t_3)
    basis = np.linalg.svd(t0[None])[2][1:]  # two unit vectors orthogonal to t0

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = t0 + p[3:] @ basis
        return Rotation.from_rotvec(p[:3]).as_matrix() @ R_33, t / np.linalg.norm(t)

    def residuals(p: np.ndarray) -> np.ndarray:
        return sampson_px(*unpack(p), pts_a_m2, pts_b_m2, K_33)

    fit = least_squares(residuals, np.zeros(5), loss="huber", f_scale=scale_px)
    return unpack(fit.x)


ESSENTIAL_RETRIES = 4  # reorderings of the matches tried when OpenCV's five-point solver fails


def essential_matrix(
    pts_a_m2: np.ndarray,
    pts_b_m2: np.ndarray,
    K_33: np.ndarray,
    threshold_px: float,
    confidence: float,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """OpenCV's five-point RANSAC essential matrix (E, inlier mask [M, 1]), or (None, None).

    OpenCV 5.1's five-point solver stops some calls with an assertion in `solvePoly` when a
    minimal sample gives a degenerate polynomial (seen on real ScanNet pairs). Its RANSAC draws
    the same samples on every call, so the call is repeated with the matches in another
    (seeded) order, which draws other samples; the mask is put back in the callers' order.
    Under OpenCV 5.0 and older the first call returns and nothing changes.
    """
    for attempt in range(ESSENTIAL_RETRIES + 1):
        order = (
            np.arange(len(pts_a_m2))
            if attempt == 0
            else np.random.default_rng(attempt).permutation(len(pts_a_m2))
        )
        try:
            E, mask = cv2.findEssentialMat(
                pts_a_m2[order],
                pts_b_m2[order],
                K_33,
                method=cv2.RANSAC,
                prob=confidence,
                threshold=threshold_px,
            )
        except cv2.error as exc:
            logger.warning(
                "OpenCV %s's five-point essential-matrix solver failed on try %d of %d (%s)%s",
                cv2.__version__,
                attempt + 1,
                ESSENTIAL_RETRIES + 1,
                str(exc).strip().splitlines()[-1],
                "; retrying with the matches reordered" if attempt < ESSENTIAL_RETRIES else "",
            )
            continue
        if mask is not None:
            mask = mask[np.argsort(order)]
        return E, mask
    return None, None


def relative_pose(
    image_a: np.ndarray,
    image_b: np.ndarray,
    K_33: np.ndarray,
    cfg: TwoViewConfig | None = None,
) -> TwoViewPose:
    """Estimates the pose of view b relative to view a (both with intrinsics K_33).

    Raises InvalidArgumentError when fewer than 8 matches or 5 inliers survive (views that do
    not overlap, or lack texture): no pose is better than a wrong one.
    """
    cfg = cfg or TwoViewConfig()
    pts_a, pts_b = match_features(_gray_u8(image_a, "image_a"), _gray_u8(image_b, "image_b"), cfg)
    if len(pts_a) < MIN_MATCHES:
        raise InvalidArgumentError(
            "image_b",
            f"only {len(pts_a)} feature matches (need {MIN_MATCHES}): the views may "
            "not overlap or lack texture",
        )
    E, mask = essential_matrix(pts_a, pts_b, K_33, cfg.ransac_threshold_px, cfg.ransac_confidence)
    if E is None or E.shape[0] < 3:
        raise InvalidArgumentError("image_b", "no essential matrix fits the matches")
    E = E[:3]  # degenerate inputs stack several solutions; take the best-supported first one
    n_inliers, R, t, pose_mask = cv2.recoverPose(E, pts_a, pts_b, K_33, mask=mask.copy())
    if n_inliers < 5:
        raise InvalidArgumentError(
            "image_b", f"only {n_inliers} matches agree with a relative pose (need 5)"
        )
    keep = pose_mask.ravel() > 0
    R, t = R.astype(np.float64), t.ravel().astype(np.float64)
    if cfg.refine:
        R, t = refine_pose(R, t, pts_a[keep], pts_b[keep], K_33, cfg.refine_scale_px)
    return TwoViewPose(
        R_33=R,
        t_3=t / np.linalg.norm(t),
        n_matches=len(pts_a),
        n_inliers=int(n_inliers),
        inliers_a_m2=pts_a[keep],
        inliers_b_m2=pts_b[keep],
    )
