"""Visual odometry: camera motion for imported video estimated from the pixels alone.

The result is a ``CameraMotion`` with the conventions of ``record/motion.py`` (axes,
signs, per-frame deltas in the camera frame of frame ``i``), as a motion log gives.

``VisualOdometry`` estimates the motion from consecutive frames alone (OpenCV):
Shi-Tomasi corners tracked with pyramidal Lucas-Kanade (checked forwards and
backwards, seeded with the previous frame's rotation so fast steady turns still
track), then candidate motions, each scored by Torr's GRIC (a robust fit term
plus a penalty for the model's complexity):

* **rotation only**: rays rotate rigidly (``b1 = R b0``), fitted by RANSAC over
  pairs of rays with the Kabsch/Wahba solution. Exact for a camera that turns
  in place and for distant scenes, and never degenerate; being the simplest
  model it wins unless the tracks show parallax.
* **rotation and translation**: the essential matrix (``cv2.findEssentialMat``
  + ``cv2.recoverPose``) and the decompositions of a homography
  (``cv2.decomposeHomographyMat``), scored by their tracks' distances from the
  epipolar lines. The homography is there because a single plane filling the
  view (a wall: common in games and corridors) fits *two* different motions
  equally well, and the essential matrix alone then picks one of them at random.

Among the candidates that score about as well as the best, the one closest to
the previous frame's rotation wins (turns are mostly continuous). Corners are
not taken from **static overlays** (a game's status bar, a logo, a burnt-in
timestamp): pixels that stayed the same while most of the picture changed, in
at least 95% of the moving frames seen so far (after 5 of them). OpenCV's
RANSAC is reseeded for every pair, so an estimate doesn't depend on what else
ran in the process.

Intrinsics are assumed from a horizontal field of view (ViZDoom's default is
90°) with the principal point at the centre. Monocular video has no metric
scale, so the translation is the unit direction times the median *parallax*
angle of the tracks after removing the rotation (radians per frame, roughly
translation divided by scene depth): unit ``"parallax_rad"``.

Each frame is flagged unreliable, with a reason, when there is too little
texture to find corners (``low_texture``), too few tracks survive the
forward-backward check (``few_tracks``: low texture, blur, a cut), the chosen
model explains fewer than half of them (``few_inliers``), the image moved more
than a tenth of its width in one frame (``fast_motion``: fast turns blur real
footage and leave little overlap), or motions whose rotations differ by more
than ``ambiguity_deg`` fit equally well (``ambiguous``: a planar scene).
Flagged frames keep their estimate when a model could be fitted; otherwise
their motion is interpolated from the neighbouring frames (``filled_frames``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from neuralworld.record.motion import CV_TO_FLU, CameraMotion, euler_to_matrix, gaussian_smooth, matrix_to_euler


def _cv_to_body_rotation(rot_cv: np.ndarray) -> np.ndarray:
    """OpenCV's pair rotation (``X1 = R X0``, camera axes) → the second camera's
    orientation in the first camera's forward-left-up frame."""
    return CV_TO_FLU @ rot_cv.T @ CV_TO_FLU.T


@dataclass
class PairMotion:
    """What visual odometry made of one pair of consecutive frames."""

    rotation: np.ndarray  # (3,) yaw, pitch, roll, degrees
    translation: np.ndarray  # (3,) right, up, forward, parallax radians (0 when none was detected)
    rotation_cv: np.ndarray  # (3, 3) X1 = R X0 in OpenCV camera axes (used to seed the next tracking)
    model: str  # "rotation", "essential" or "none"
    tracks: int  # features tracked both ways
    inliers: int  # tracks the chosen model explains
    flow_px: float  # median feature displacement, pixels at the working width
    reason: str = ""  # why the pair is unreliable ("" = reliable)

    @property
    def reliable(self) -> bool:
        return not self.reason


class VisualOdometry:
    """Camera motion between consecutive frames from the pixels alone.

    Feed frames in order with ``step(frame)``; each call after the first returns
    the ``PairMotion`` from the previous frame to this one. Frames are RGB or
    grey, any size; they are converted to grey and shrunk to ``work_width``.

    hfov_deg: horizontal field of view of the whole frame.
    min_tracks: fewer tracks than this and no motion is estimated (it is filled in).
    reliable_tracks: fewer than this and the estimate is kept but flagged.
    inlier_px: a track within this many pixels of a model counts as explained.
    noise_px: the tracking noise GRIC assumes (pixels at ``work_width``).
    fast_motion: median track displacement, as a fraction of the width, above
        which a frame is flagged.
    ambiguity_deg: flag a frame when motions whose rotations differ by more
        than this fit about equally well.
    """

    def __init__(
        self,
        hfov_deg: float = 90.0,
        *,
        work_width: int = 320,
        max_features: int = 400,
        min_tracks: int = 12,
        reliable_tracks: int = 50,
        min_inlier_fraction: float = 0.5,
        inlier_px: float = 1.0,
        noise_px: float = 0.8,
        fast_motion: float = 0.1,
        ambiguity_deg: float = 5.0,
        seed: int = 0,
    ):
        if not 1.0 <= hfov_deg < 179.0:
            raise ValueError(f"hfov_deg must be in [1, 179), got {hfov_deg}")
        self.hfov_deg = float(hfov_deg)
        self.work_width = int(work_width)
        self.max_features = int(max_features)
        self.min_tracks = int(min_tracks)
        self.reliable_tracks = int(reliable_tracks)
        self.min_inlier_fraction = float(min_inlier_fraction)
        self.inlier_px = float(inlier_px)
        self.noise_px = float(noise_px)
        self.fast_motion = float(fast_motion)
        self.ambiguity_deg = float(ambiguity_deg)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._pairs = 0
        self._prev: np.ndarray | None = None
        # static overlays (a game's status bar, a logo, a timestamp): pixels that stay put
        # while the rest of the picture moves; their corners would vote for "no motion"
        self._changed: np.ndarray | None = None  # (h, w) how often each pixel changed
        self._moving_pairs = 0  # pairs in which most of the picture changed
        self._last_rot = np.eye(3)
        self._have_prior = False
        self.K: np.ndarray | None = None

    # -- image preparation ---------------------------------------------------
    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        img = np.asarray(frame)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        h, w = img.shape
        if w > self.work_width:
            scale = self.work_width / w
            img = cv2.resize(img, (self.work_width, max(int(round(h * scale)), 8)), interpolation=cv2.INTER_AREA)
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        h, w = img.shape
        if self.K is None or self.K[0, 2] != (w - 1) / 2 or self.K[1, 2] != (h - 1) / 2:
            f = (w / 2) / math.tan(math.radians(self.hfov_deg) / 2)
            self.K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
        return img

    def _bearings(self, pts: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) → unit rays (N, 3) in OpenCV camera axes."""
        k = self.K
        rays = np.stack([(pts[:, 0] - k[0, 2]) / k[0, 0], (pts[:, 1] - k[1, 2]) / k[1, 1], np.ones(len(pts))], axis=1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def _project(self, rays: np.ndarray) -> np.ndarray:
        k = self.K
        z = np.where(rays[:, 2] > 1e-3, rays[:, 2], 1e-3)
        return np.stack([k[0, 0] * rays[:, 0] / z + k[0, 2], k[1, 1] * rays[:, 1] / z + k[1, 2]], axis=1)

    # -- the estimate ----------------------------------------------------------
    def step(self, frame: np.ndarray) -> PairMotion | None:
        img = self._prepare(frame)
        prev, self._prev = self._prev, img
        if prev is None or prev.shape != img.shape:
            self._last_rot, self._have_prior = np.eye(3), False
            self._changed, self._moving_pairs = np.zeros(img.shape, np.float32), 0
            return None
        changed = cv2.absdiff(prev, img) > 8  # above compression noise
        if changed.mean() > 0.3:
            self._changed += changed
            self._moving_pairs += 1
        # OpenCV's RANSAC draws from its own global generator: seed it per pair so an
        # estimate doesn't depend on what ran before it in this process
        cv2.setRNGSeed(self.seed + self._pairs)
        self._pairs += 1
        motion = self._estimate(prev, img)
        # the next pair starts from this rotation (tracking seed, tie-breaker) if there was one
        self._have_prior = motion.model != "none"
        self._last_rot = motion.rotation_cv if self._have_prior else np.eye(3)
        return motion

    def overlay_mask(self) -> np.ndarray | None:
        """Where corners may be taken (255) once enough moving frames have shown which
        pixels never change (0): static overlays. None until then, or if there are none."""
        if self._changed is None or self._moving_pairs < 5:
            return None
        static = (self._changed < 0.05 * self._moving_pairs).astype(np.uint8)
        if not static.any():
            return None
        static = cv2.dilate(static, np.ones((7, 7), np.uint8))  # corners sit on the overlay's edges
        return np.where(static > 0, 0, 255).astype(np.uint8)

    def _none(self, reason: str, tracks: int = 0, flow: float = 0.0) -> PairMotion:
        return PairMotion(np.zeros(3), np.zeros(3), np.eye(3), "none", tracks, 0, flow, reason)

    def _estimate(self, prev: np.ndarray, img: np.ndarray) -> PairMotion:
        h, w = img.shape
        min_dist = max(3, w // 48)
        corners = cv2.goodFeaturesToTrack(prev, self.max_features, 0.01, min_dist, blockSize=5, mask=self.overlay_mask())
        if corners is None or len(corners) < self.min_tracks:
            return self._none("low_texture", 0 if corners is None else len(corners))
        p0 = corners.reshape(-1, 2).astype(np.float32)
        # start each track where the last rotation would put it (constant angular velocity)
        guess = self._project(self._bearings(p0) @ self._last_rot.T)
        guess = np.clip(guess, [0, 0], [w - 1, h - 1]).astype(np.float32)
        lk = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, img, p0, guess, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(img, prev, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (np.linalg.norm(back - p0, axis=1) < 0.7)
        good &= (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
        p0, p1 = p0[good].astype(np.float64), p1[good].astype(np.float64)
        tracks = len(p0)
        flow = float(np.median(np.linalg.norm(p1 - p0, axis=1))) if tracks else 0.0
        if tracks < self.min_tracks:
            return self._none("few_tracks", tracks, flow)

        b0, b1 = self._bearings(p0), self._bearings(p1)
        thr = self.inlier_px / self.K[0, 0]  # pixels → normalised image units
        sigma = self.noise_px / self.K[0, 0]
        rot_cv, _ = _rotation_ransac(b0, b1, thr, self.rng)
        rot_err = _transfer_error(b0, b1, rot_cv)
        chosen = _Candidate("rotation", rot_cv, np.zeros(3), int((rot_err < thr).sum()), _gric(rot_err, sigma, 2, 3))
        ambiguous = False
        if chosen.inliers < 0.9 * tracks:
            # the tracks don't just rotate: there may be parallax to tell translation from
            found = [chosen, *self._parallax_candidates(p0, p1, b0, b1, sigma)]
            best = min(c.score for c in found)
            # motions that fit about as well are told apart by continuity with the previous frame
            close = [c for c in found if c.score <= best + 2.0 + 0.1 * tracks]
            prior = self._last_rot if self._have_prior else rot_cv
            close.sort(key=lambda c: _rotation_angle(c.rotation_cv.T @ prior))
            chosen = close[0]
            ambiguous = any(
                _rotation_angle(c.rotation_cv.T @ chosen.rotation_cv) > math.radians(self.ambiguity_deg) for c in close
            )

        reason = ""
        if chosen.inliers < max(self.min_tracks, self.min_inlier_fraction * tracks):
            reason = "few_inliers"
        elif tracks < self.reliable_tracks:
            reason = "few_tracks"
        elif flow > self.fast_motion * w:
            reason = "fast_motion"
        elif ambiguous:
            reason = "ambiguous"
        return PairMotion(
            rotation=matrix_to_euler(_cv_to_body_rotation(chosen.rotation_cv)),
            translation=chosen.translation,
            rotation_cv=chosen.rotation_cv,
            model=chosen.model,
            tracks=tracks,
            inliers=chosen.inliers,
            flow_px=flow,
            reason=reason,
        )

    def _parallax_candidates(
        self, p0: np.ndarray, p1: np.ndarray, b0: np.ndarray, b1: np.ndarray, sigma: float
    ) -> list["_Candidate"]:
        """Motions with translation that could explain the tracks: the essential
        matrix's, and the homography's decompositions (the essential matrix alone
        is ambiguous when the tracks lie on one plane). All are scored alike, by
        their tracks' distances from the epipolar lines (Sampson)."""
        motions = []
        E, mask = cv2.findEssentialMat(p0, p1, self.K, method=cv2.RANSAC, prob=0.999, threshold=self.inlier_px)
        if E is not None and E.shape[0] >= 3:
            for k in range(0, E.shape[0] - 2, 3):
                _, rot_e, t_e, _ = cv2.recoverPose(E[k : k + 3], p0, p1, self.K, mask=mask.copy())
                motions.append(("essential", rot_e, t_e.ravel()))
        H, hmask = cv2.findHomography(p0, p1, cv2.RANSAC, self.inlier_px)
        if H is not None:
            inl = hmask.ravel() > 0
            _, rots, ts, normals = cv2.decomposeHomographyMat(H, self.K)
            for rot_h, t_h, n_h in zip(rots, ts, normals):
                # the plane must lie in front of both cameras
                if np.mean(b0[inl] @ n_h.ravel() > 0) < 0.9 or np.mean(b1[inl] @ (rot_h @ n_h).ravel() > 0) < 0.9:
                    continue
                motions.append(("homography", rot_h, t_h.ravel()))
        thr = self.inlier_px / self.K[0, 0]
        out = []
        for model, rot, t in motions:
            norm = float(np.linalg.norm(t))
            if norm < 1e-9:
                continue
            err = _sampson_distance(_cross_matrix(t / norm) @ rot, b0, b1)
            err = np.where(_in_front(b0, b1, rot, t / norm, sigma), err, np.inf)  # a point behind a camera fits nothing
            inl = err < thr
            out.append(_Candidate(model, rot, _translation(b0[inl], b1[inl], rot, t), int(inl.sum()), _gric(err, sigma, 3, 5)))
        return out


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _sampson_distance(E: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """First-order distance of each track from its epipolar line, in normalised
    image units (tracks given as rays, (N, 3))."""
    x0 = b0 / b0[:, 2:3]
    x1 = b1 / b1[:, 2:3]
    ex0 = x0 @ E.T  # (N, 3) = E x0
    etx1 = x1 @ E  # (N, 3) = E^T x1
    num = np.sum(x1 * ex0, axis=1)
    den = ex0[:, 0] ** 2 + ex0[:, 1] ** 2 + etx1[:, 0] ** 2 + etx1[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-18))


def _in_front(b0: np.ndarray, b1: np.ndarray, rot: np.ndarray, t: np.ndarray, min_angle: float) -> np.ndarray:
    """Tracks whose triangulated point lies in front of both cameras (midpoint
    method). Tracks with less parallax than ``min_angle`` (radians) can't tell,
    and pass."""
    # X1 = R X0 + t: solve s0 (R b0) - s1 b1 = -t for the depths s0, s1 in least squares
    a = b0 @ rot.T
    ab = np.sum(a * b1, axis=1)
    at, bt = a @ t, b1 @ t
    den = 1.0 - ab**2  # sin² of the angle between the rays
    s0 = (ab * bt - at) / np.maximum(den, 1e-12)
    s1 = (bt - ab * at) / np.maximum(den, 1e-12)
    return ((s0 > 0) & (s1 > 0)) | (den < min_angle**2)


@dataclass
class _Candidate:
    model: str
    rotation_cv: np.ndarray  # (3, 3) X1 = R X0
    translation: np.ndarray  # (3,) right, up, forward in parallax radians
    inliers: int
    score: float  # GRIC: lower is better


def _gric(err: np.ndarray, sigma: float, dim: int, params: int) -> float:
    """Torr's Geometric Robust Information Criterion for a two-view model whose
    manifold has dimension ``dim`` and ``params`` parameters: a robust fit term
    plus a penalty for complexity, so a rotation (dim 2, 3 parameters) is
    preferred to an essential matrix (dim 3, 5 parameters) unless the
    parallax really needs the latter. ``err``: residuals, normalised units."""
    n, r = len(err), 4  # two 2D points per track
    fit = np.minimum((np.nan_to_num(err, posinf=1e9) / sigma) ** 2, 2.0 * (r - dim))
    return float(fit.sum() + math.log(r) * dim * n + math.log(r * n) * params)


def _transfer_error(b0: np.ndarray, b1: np.ndarray, rot_cv: np.ndarray) -> np.ndarray:
    """Distance (normalised image plane) between where rotation alone sends each
    track and where it was seen."""
    a = b0 @ rot_cv.T
    a = a[:, :2] / np.maximum(a[:, 2:3], 1e-6)
    return np.linalg.norm(a - b1[:, :2] / b1[:, 2:3], axis=1)


def _rotation_angle(rot: np.ndarray) -> float:
    """Angle (radians) of a rotation matrix."""
    return math.acos(max(-1.0, min(1.0, (float(np.trace(rot)) - 1.0) / 2.0)))


def _translation(b0: np.ndarray, b1: np.ndarray, rot_cv: np.ndarray, t_cv: np.ndarray) -> np.ndarray:
    """OpenCV's (R, t) → the camera's move as (right, up, forward), scaled to the parallax."""
    centre = -rot_cv.T @ np.asarray(t_cv, np.float64).ravel()  # second camera centre in the first's axes
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    return np.array([centre[0], -centre[1], centre[2]]) * _median_parallax(b0, b1, rot_cv)


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotations R with ``b ≈ R a`` in the least-squares sense, batched:
    ``a``, ``b`` (..., N, 3) → (..., 3, 3)."""
    h = np.swapaxes(a, -1, -2) @ b  # (..., 3, 3) = sum a b^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))
    fix = np.ones(h.shape[:-2] + (3,))
    fix[..., 2] = d
    return np.swapaxes(vt, -1, -2) @ (fix[..., :, None] * np.swapaxes(u, -1, -2))


def _rotation_ransac(
    b0: np.ndarray, b1: np.ndarray, thr: float, rng: np.random.Generator, hypotheses: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation-only model ``b1 = R b0`` by RANSAC over pairs of bearings; refitted on its inliers."""
    n = len(b0)
    i = rng.integers(0, n, hypotheses)
    j = (i + rng.integers(1, n, hypotheses)) % n
    rots = _kabsch(np.stack([b0[i], b0[j]], 1), np.stack([b1[i], b1[j]], 1))  # (H, 3, 3)
    err = np.linalg.norm(np.einsum("hij,nj->hni", rots, b0) - b1[None], axis=2)  # (H, N)
    best = int(np.argmax((err < thr).sum(1)))
    inl = err[best] < thr
    rot = rots[best]
    for _ in range(2):  # refit on the inliers, then re-select them
        if inl.sum() < 3:
            break
        rot = _kabsch(b0[inl], b1[inl])
        inl = np.linalg.norm(b0 @ rot.T - b1, axis=1) < thr
    return rot, inl


def _median_parallax(b0: np.ndarray, b1: np.ndarray, rot_cv: np.ndarray) -> float:
    """Median angle (radians) between the tracks after removing the rotation:
    what translation alone moved them, about |translation| / depth."""
    if len(b0) == 0:
        return 0.0
    derot = b0 @ rot_cv.T
    cos = np.clip(np.sum(derot * b1, axis=1), -1.0, 1.0)
    return float(np.median(np.arccos(cos)))


def motion_from_pairs(
    pairs: Sequence[PairMotion | None],
    times: Sequence[float],
    *,
    smooth_frames: float = 0.0,
    details: dict[str, Any] | None = None,
) -> CameraMotion:
    """Per-pair VO results (``pairs[i]`` takes frame ``i`` to ``i + 1``; ``None`` where
    no estimate was attempted) → ``CameraMotion``: frames with no model get their
    motion interpolated from the neighbours, then everything is optionally
    smoothed (Gaussian, ``smooth_frames`` sigma) and integrated into poses."""
    times = np.asarray(times, np.float64)
    n = len(times)
    rotation = np.zeros((n, 3))
    translation = np.zeros((n, 3))
    have = np.zeros(n, bool)
    reliable = np.zeros(n, bool)
    reasons: Counter[str] = Counter()
    models: Counter[str] = Counter()
    for i, pm in enumerate(list(pairs)[: max(n - 1, 0)]):
        if pm is None:
            reasons["no_estimate"] += 1
            continue
        models[pm.model] += 1
        if pm.model != "none":
            rotation[i], translation[i], have[i] = pm.rotation, pm.translation, True
        reliable[i] = pm.reliable
        if pm.reason:
            reasons[pm.reason] += 1
    body = slice(0, max(n - 1, 0))
    missing = ~have[body]
    if missing.any() and have[body].any():
        idx = np.arange(n - 1)
        for values in (rotation, translation):
            for c in range(3):
                values[body, c][missing] = np.interp(idx[missing], idx[~missing], values[body, c][~missing])
    if smooth_frames > 0 and n > 2:
        rotation[body] = gaussian_smooth(rotation[body], smooth_frames)
        translation[body] = gaussian_smooth(translation[body], smooth_frames)
    if n:
        reasons["last_frame"] += 1

    # integrate: orientation and position in the first frame's forward-left-up axes
    pose = np.zeros((n, 6))
    rot = np.eye(3)
    pos = np.zeros(3)
    for i in range(1, n):
        d = translation[i - 1]  # right, up, forward
        pos = pos + rot @ np.array([d[2], -d[0], d[1]])
        rot = rot @ euler_to_matrix(*rotation[i - 1])
        pose[i, :3] = pos
        pose[i, 3:] = matrix_to_euler(rot)
    if n:
        pose[:, 3] = np.degrees(np.unwrap(np.radians(pose[:, 3])))
    return CameraMotion(
        times=times,
        rotation=rotation,
        translation=translation,
        pose=pose,
        reliable=reliable,
        source="visual_odometry",
        translation_unit="parallax_rad",
        reasons=dict(reasons),
        details={
            "filled_frames": int(missing.sum()),
            "models": dict(models),
            "smooth_frames": float(smooth_frames),
            **(details or {}),
        },
    )


def estimate_camera_motion(
    frames: Iterable[np.ndarray],
    times: Sequence[float] | None = None,
    *,
    fps: float = 30.0,
    hfov_deg: float = 90.0,
    smooth_frames: float = 0.0,
    **vo_options: Any,
) -> CameraMotion:
    """Visual odometry over a sequence of frames (RGB or grey arrays).

    ``times`` default to ``i / fps``. ``vo_options`` go to ``VisualOdometry``.
    """
    vo = VisualOdometry(hfov_deg, **vo_options)
    pairs = []
    count = 0
    for frame in frames:
        pm = vo.step(frame)
        if count:
            pairs.append(pm)
        count += 1
    t = np.arange(count) / fps if times is None else np.asarray(times, np.float64)
    if len(t) != count:
        raise ValueError(f"{count} frames but {len(t)} times")
    return motion_from_pairs(pairs, t, smooth_frames=smooth_frames, details={"hfov_deg": hfov_deg})
