"""Camera parameters and coordinate transforms for Human3.6M and HumanEva-I.

Conventions (those of the VideoPose3D preprocessed files):

* World coordinates are z-up, in metres in the ``.npz`` files; the published
  camera translations are in millimetres and are converted to metres by
  :func:`h36m_camera` / :func:`humaneva_camera` (``translation_m``).
* A camera's ``orientation`` is a unit quaternion ``(w, x, y, z)`` rotating
  camera axes into world axes; its ``translation`` is the camera centre in
  world coordinates. Hence ``X_cam = q^-1 * (X_world - t)``
  (:func:`world_to_camera`) and ``X_world = q * X_cam + t``
  (:func:`camera_to_world`).
* Camera space: x right, y down, z forward (depth), the optical axis through
  the principal point ``center``.
* Screen normalisation maps pixel x in ``[0, w]`` to ``[-1, 1]`` and keeps the
  aspect ratio: ``X / w * 2 - [1, h / w]`` (:func:`normalize_screen_coordinates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = [
    "H36M_INTRINSICS",
    "H36M_EXTRINSICS",
    "HUMANEVA_INTRINSICS",
    "HUMANEVA_EXTRINSICS",
    "Camera",
    "h36m_camera",
    "h36m_cameras",
    "humaneva_camera",
    "humaneva_cameras",
    "qrot",
    "qinverse",
    "quaternion_to_matrix",
    "world_to_camera",
    "camera_to_world",
    "normalize_screen_coordinates",
    "image_coordinates",
    "project_to_pixels",
]

# ---------------------------------------------------------------------------
# Human3.6M calibration (public constants of the dataset). Lengths in mm,
# focal length / centre in pixels, azimuth in degrees (for visualisation).
# ---------------------------------------------------------------------------

#: The four Human3.6M cameras' intrinsics, in the order of the 2D files.
H36M_INTRINSICS: tuple[dict, ...] = (
    dict(id="54138969", center=(512.54150390625, 515.4514770507812),
         focal_length=(1145.0494384765625, 1143.7811279296875),
         radial_distortion=(-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043),
         tangential_distortion=(-0.0009756988729350269, -0.00142447161488235),
         res_w=1000, res_h=1002, azimuth=70),
    dict(id="55011271", center=(508.8486328125, 508.0649108886719),
         focal_length=(1149.6756591796875, 1147.5916748046875),
         radial_distortion=(-0.1942136287689209, 0.2404085397720337, 0.006819975562393665),
         tangential_distortion=(-0.0016190266469493508, -0.0027408944442868233),
         res_w=1000, res_h=1000, azimuth=-70),
    dict(id="58860488", center=(519.8158569335938, 501.40264892578125),
         focal_length=(1149.1407470703125, 1148.7989501953125),
         radial_distortion=(-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427),
         tangential_distortion=(0.0014843869721516967, -0.0007599993259645998),
         res_w=1000, res_h=1000, azimuth=110),
    dict(id="60457274", center=(514.9682006835938, 501.88201904296875),
         focal_length=(1145.5113525390625, 1144.77392578125),
         radial_distortion=(-0.198384091258049, 0.21832367777824402, -0.008947807364165783),
         tangential_distortion=(-0.0005872055771760643, -0.0018133620033040643),
         res_w=1000, res_h=1002, azimuth=-110),
)

# (orientation quaternion (w, x, y, z), translation in mm) per subject/camera.
_H36M_EXTRINSICS_TABLE = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}

#: Per-subject extrinsics: subject -> 4 dicts with ``orientation`` (w, x, y, z)
#: and ``translation`` (camera centre in world coordinates, mm).
H36M_EXTRINSICS: dict[str, tuple[dict, ...]] = {
    subject: tuple(dict(orientation=q, translation=t) for q, t in cams)
    for subject, cams in _H36M_EXTRINSICS_TABLE.items()
}

#: HumanEva-I colour cameras C1..C3 (640x480), in the order of the 2D files.
HUMANEVA_INTRINSICS: tuple[dict, ...] = (
    dict(id="C1", res_w=640, res_h=480, azimuth=0),
    dict(id="C2", res_w=640, res_h=480, azimuth=-90),
    dict(id="C3", res_w=640, res_h=480, azimuth=90),
)

#: HumanEva-I extrinsics per subject (S1..S3): orientation (w, x, y, z) and
#: translation in mm, cameras C1..C3.
HUMANEVA_EXTRINSICS: dict[str, tuple[dict, ...]] = {
    "S1": (
        dict(orientation=(0.424207, -0.4983646, -0.5802981, 0.4847012),
             translation=(4062.227, 663.2477, 1528.397)),
        dict(orientation=(0.6503354, -0.7481602, -0.0919284, 0.0941766),
             translation=(844.8131, -3805.2092, 1504.9929)),
        dict(orientation=(0.0664734, -0.0690535, 0.7416416, -0.6639132),
             translation=(-797.67377, 3916.3174, 1433.6602)),
    ),
    "S2": (
        dict(orientation=(0.4214752, -0.4961493, -0.5838273, 0.4851187),
             translation=(4112.9121, 626.4929, 1545.2988)),
        dict(orientation=(0.6501393, -0.7476588, -0.0954617, 0.0959808),
             translation=(923.5740, -3877.9243, 1504.5518)),
        dict(orientation=(0.0699353, -0.0712403, 0.7421637, -0.662742),
             translation=(-781.4915, 3838.8853, 1444.9929)),
    ),
    "S3": (
        dict(orientation=(0.424207, -0.4983646, -0.5802981, 0.4847012),
             translation=(4062.2271, 663.2477, 1528.3970)),
        dict(orientation=(0.6503354, -0.7481602, -0.0919284, 0.0941766),
             translation=(844.8131, -3805.2092, 1504.9929)),
        dict(orientation=(0.0664734, -0.0690535, 0.7416416, -0.6639132),
             translation=(-797.6738, 3916.3174, 1433.6602)),
    ),
}


@dataclass(frozen=True)
class Camera:
    """One calibrated camera.

    Attributes:
        id: camera identifier (e.g. ``'54138969'`` or ``'C1'``).
        res_w: image width in pixels.
        res_h: image height in pixels.
        orientation: ``(4,)`` float64 unit quaternion ``(w, x, y, z)``,
            camera-to-world rotation.
        translation_m: ``(3,)`` camera centre in world coordinates, metres.
        focal_length: ``(2,)`` pixels (``None`` when unknown).
        center: ``(2,)`` principal point in pixels (``None`` when unknown).
        radial_distortion: ``(3,)`` k1, k2, k3 (``None`` when unknown).
        tangential_distortion: ``(2,)`` p1, p2 (``None`` when unknown).
        azimuth: viewing azimuth in degrees (visualisation only).
    """

    id: str
    res_w: int
    res_h: int
    orientation: np.ndarray
    translation_m: np.ndarray
    focal_length: Optional[np.ndarray] = None
    center: Optional[np.ndarray] = None
    radial_distortion: Optional[np.ndarray] = None
    tangential_distortion: Optional[np.ndarray] = None
    azimuth: float = 0.0

    def world_to_camera(self, x_world_m: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world metres -> camera metres (see :func:`world_to_camera`)."""
        return world_to_camera(x_world_m, self.orientation, self.translation_m)

    def camera_to_world(self, x_cam_m: np.ndarray) -> np.ndarray:
        """``(..., 3)`` camera metres -> world metres (see :func:`camera_to_world`)."""
        return camera_to_world(x_cam_m, self.orientation, self.translation_m)

    def project(self, x_cam: np.ndarray, distortion: bool = False) -> np.ndarray:
        """Project camera-space points ``(..., 3)`` (any unit) to pixels ``(..., 2)``."""
        if self.focal_length is None or self.center is None:
            raise ValueError(f"camera {self.id}: got no focal_length/center, "
                             "expected intrinsics to project")
        return project_to_pixels(
            x_cam, self.focal_length, self.center,
            self.radial_distortion if distortion else None,
            self.tangential_distortion if distortion else None)


def _arr(value) -> Optional[np.ndarray]:
    return None if value is None else np.asarray(value, dtype=np.float64)


def _make_camera(intr: dict, extr: dict) -> Camera:
    return Camera(
        id=str(intr["id"]), res_w=int(intr["res_w"]), res_h=int(intr["res_h"]),
        orientation=_arr(extr["orientation"]),
        translation_m=_arr(extr["translation"]) / 1000.0,  # mm -> m
        focal_length=_arr(intr.get("focal_length")), center=_arr(intr.get("center")),
        radial_distortion=_arr(intr.get("radial_distortion")),
        tangential_distortion=_arr(intr.get("tangential_distortion")),
        azimuth=float(intr.get("azimuth", 0.0)),
    )


def h36m_camera(subject: str, index: int) -> Camera:
    """Calibrated Human3.6M camera ``index`` (0..3) of ``subject`` ('S1', ..., 'S11')."""
    if subject not in H36M_EXTRINSICS:
        raise ValueError(f"subject: got {subject!r}, expected one of {sorted(H36M_EXTRINSICS)}")
    if not 0 <= int(index) < len(H36M_INTRINSICS):
        raise ValueError(f"index: got {index!r}, expected 0..{len(H36M_INTRINSICS) - 1}")
    return _make_camera(H36M_INTRINSICS[index], H36M_EXTRINSICS[subject][index])


def h36m_cameras(subject: str) -> list[Camera]:
    """The four calibrated cameras of a Human3.6M subject, in 2D-file order."""
    return [h36m_camera(subject, i) for i in range(len(H36M_INTRINSICS))]


def _humaneva_subject(subject: str) -> str:
    """'Train/S1', 'Validate/S2', 'Unlabeled/Train/S3' -> 'S1', 'S2', 'S3'."""
    return subject.rsplit("/", 1)[-1]


def humaneva_camera(subject: str, index: int) -> Camera:
    """HumanEva-I camera ``index`` (0..2 = C1..C3) of ``subject``.

    ``subject`` may carry VideoPose3D's partition prefix (``'Train/S1'``,
    ``'Validate/S2'``). Only extrinsics and resolution are known.
    """
    base = _humaneva_subject(subject)
    if base not in HUMANEVA_EXTRINSICS:
        raise ValueError(f"subject: got {subject!r}, expected S1, S2 or S3 "
                         "(optionally prefixed 'Train/' or 'Validate/')")
    if not 0 <= int(index) < len(HUMANEVA_INTRINSICS):
        raise ValueError(f"index: got {index!r}, expected 0..{len(HUMANEVA_INTRINSICS) - 1}")
    return _make_camera(HUMANEVA_INTRINSICS[index], HUMANEVA_EXTRINSICS[base][index])


def humaneva_cameras(subject: str) -> list[Camera]:
    """The three HumanEva-I cameras (C1..C3) of a subject."""
    return [humaneva_camera(subject, i) for i in range(len(HUMANEVA_INTRINSICS))]


# ---------------------------------------------------------------------------
# quaternion maths (numpy, broadcasting over leading dimensions)
# ---------------------------------------------------------------------------

def qinverse(q: np.ndarray) -> np.ndarray:
    """Inverse of unit quaternions ``(..., 4)`` ``(w, x, y, z)``: the conjugate."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"q: got shape {q.shape}, expected (..., 4) quaternions (w, x, y, z)")
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v`` ``(..., 3)`` by unit quaternions ``q`` ``(..., 4)``.

    ``q`` is ``(w, x, y, z)`` and broadcasts against ``v``'s leading
    dimensions. Uses ``v' = v + 2w (u x v) + 2 u x (u x v)`` with ``u = (x, y, z)``.

    Returns:
        ``(..., 3)`` rotated vectors (float64, or float32 if ``v`` is float32).
    """
    v = np.asarray(v)
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"q: got shape {q.shape}, expected (..., 4) quaternions (w, x, y, z)")
    if v.shape[-1] != 3:
        raise ValueError(f"v: got shape {v.shape}, expected (..., 3) vectors")
    out_dtype = np.float32 if v.dtype == np.float32 else np.float64
    v64 = v.astype(np.float64, copy=False)
    w = q[..., :1]
    u = q[..., 1:]
    uv = np.cross(u, v64)
    uuv = np.cross(u, uv)
    return (v64 + 2.0 * (w * uv + uuv)).astype(out_dtype, copy=False)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)`` ``(w, x, y, z)``.

    ``quaternion_to_matrix(q) @ v == qrot(q, v)`` for column vectors ``v``
    (both use ``q`` as given, without renormalising: the published camera
    quaternions are used verbatim, as the reference pipeline does).
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"q: got shape {q.shape}, expected (..., 4) quaternions (w, x, y, z)")
    w, x, y, z = (q[..., i] for i in range(4))
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def world_to_camera(x: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """World -> camera coordinates.

    Args:
        x: points ``(..., 3)`` in world coordinates (metres in the files).
        orientation: ``(4,)`` camera quaternion ``(w, x, y, z)``.
        translation: ``(3,)`` camera centre in world coordinates, same unit
            as ``x`` (use :attr:`Camera.translation_m` for metres).

    Returns:
        ``(..., 3)`` points in camera coordinates, same unit as ``x``:
        ``q^-1 * (x - t)``.
    """
    x = np.asarray(x)
    t = np.asarray(translation, dtype=np.float64)
    q_inv = np.broadcast_to(qinverse(orientation), x.shape[:-1] + (4,))
    out = qrot(q_inv, x.astype(np.float64) - t)
    return out.astype(np.float32) if x.dtype == np.float32 else out


def camera_to_world(x: np.ndarray, orientation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Camera -> world coordinates, the inverse of :func:`world_to_camera`.

    Args:
        x: points ``(..., 3)`` in camera coordinates.
        orientation: ``(4,)`` camera quaternion ``(w, x, y, z)``.
        translation: ``(3,)`` camera centre in world coordinates, unit of ``x``.

    Returns:
        ``(..., 3)`` world points: ``q * x + t``.
    """
    x = np.asarray(x)
    q = np.broadcast_to(np.asarray(orientation, dtype=np.float64), x.shape[:-1] + (4,))
    out = qrot(q, x.astype(np.float64)) + np.asarray(translation, dtype=np.float64)
    return out.astype(np.float32) if x.dtype == np.float32 else out


# ---------------------------------------------------------------------------
# screen coordinates and projection
# ---------------------------------------------------------------------------

def _check_wh(w, h):
    if not (np.isscalar(w) and np.isscalar(h)) or w <= 0 or h <= 0:
        raise ValueError(f"w/h: got w={w!r}, h={h!r}, expected positive image width and height in pixels")


def normalize_screen_coordinates(x: np.ndarray, w: float, h: float) -> np.ndarray:
    """Pixels -> normalised screen coordinates.

    Maps x in ``[0, w]`` to ``[-1, 1]`` and y in ``[0, h]`` to
    ``[-h/w, h/w]`` (aspect ratio preserved): ``X / w * 2 - [1, h / w]``.

    Args:
        x: ``(..., 2)`` pixel coordinates.
        w: image width in pixels.
        h: image height in pixels.

    Returns:
        ``(..., 2)`` normalised coordinates (float32 for float32 input).
    """
    x = np.asarray(x)
    if x.shape[-1] != 2:
        raise ValueError(f"x: got shape {x.shape}, expected (..., 2) pixel coordinates")
    _check_wh(w, h)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return (x / w * 2 - np.array([1.0, h / w])).astype(dtype, copy=False)


def image_coordinates(x: np.ndarray, w: float, h: float) -> np.ndarray:
    """Normalised screen coordinates -> pixels (inverse of
    :func:`normalize_screen_coordinates`).

    Args:
        x: ``(..., 2)`` normalised coordinates.
        w: image width in pixels.
        h: image height in pixels.

    Returns:
        ``(..., 2)`` pixel coordinates: ``(X + [1, h / w]) * w / 2``.
    """
    x = np.asarray(x)
    if x.shape[-1] != 2:
        raise ValueError(f"x: got shape {x.shape}, expected (..., 2) normalised coordinates")
    _check_wh(w, h)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return ((x + np.array([1.0, h / w])) * w / 2).astype(dtype, copy=False)


def project_to_pixels(x_cam: np.ndarray, focal_length, center,
                      radial_distortion=None, tangential_distortion=None) -> np.ndarray:
    """Perspective projection of camera-space points to pixels.

    Pinhole model ``u = f * X / Z + c``; with distortion coefficients, the
    normalised image point is first distorted with the Brown-Conrady model
    (radial k1..k3, tangential p1, p2).

    Args:
        x_cam: ``(..., 3)`` camera-space points (any unit, ``Z > 0``).
        focal_length: ``(2,)`` fx, fy in pixels.
        center: ``(2,)`` principal point in pixels.
        radial_distortion: optional ``(3,)`` k1, k2, k3.
        tangential_distortion: optional ``(2,)`` p1, p2.

    Returns:
        ``(..., 2)`` float64 pixel coordinates.
    """
    x_cam = np.asarray(x_cam, dtype=np.float64)
    if x_cam.shape[-1] != 3:
        raise ValueError(f"x_cam: got shape {x_cam.shape}, expected (..., 3) camera-space points")
    z = x_cam[..., 2:3]
    if np.any(z <= 0):
        raise ValueError("x_cam: got points with depth Z <= 0, expected points in front of the camera")
    xy = x_cam[..., :2] / z
    if radial_distortion is not None or tangential_distortion is not None:
        k = np.zeros(3) if radial_distortion is None else np.asarray(radial_distortion, dtype=np.float64)
        p = np.zeros(2) if tangential_distortion is None else np.asarray(tangential_distortion, dtype=np.float64)
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
        xd = x * radial + 2 * p[0] * x * y + p[1] * (r2 + 2 * x * x)
        yd = y * radial + p[0] * (r2 + 2 * y * y) + 2 * p[1] * x * y
        xy = np.stack([xd, yd], axis=-1)
    return xy * np.asarray(focal_length, dtype=np.float64) + np.asarray(center, dtype=np.float64)

