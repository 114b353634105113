"""From arbitrary 3D images to the model grid and back.

Coordinate systems used here:

- *index* ``(i, j, k)``: SimpleITK's continuous voxel index, ``i`` fastest; voxel ``n``
  covers ``[n - 0.5, n + 0.5]``;
- *array* ``(a, b, c) = (k, j, i)``: numpy order of ``sitk.GetArrayFromImage``;
- *LPS*: SimpleITK's physical millimetres; *RAS* is LPS with x and y negated.

Every image is first reoriented (an exact permutation and flip of axes, no interpolation)
so that its index axes point as close as possible to L, P and S; array axis 0 is then the
axial (inferior-superior) axis, whatever the order in which the file stored the volume.
The *model grid* spans exactly the reoriented image's extent with ``size`` voxels per
axis; images are smoothed against aliasing, linearly resampled onto it and min-max
normalised to [0, 1]. The raw network output is mapped back onto the original grid by
linear interpolation and thresholded afterwards.
"""
import dataclasses
import hashlib
import math
import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

from .crops import Region, robust_unit_range, whole_region
from .prompts import IndexBox, IndexPoint, PromptOutsideError

CANONICAL_ORIENTATION = "LPS"
SPACES = ("voxel", "LPS", "RAS")
LPS_RAS_FLIP = np.array([-1.0, -1.0, 1.0])
"""Multiplying LPS coordinates by this gives RAS, and RAS by it gives LPS."""


def require_image(value: object, name: str = "image") -> sitk.Image:
    """``value`` if it is a SimpleITK image, else :class:`ImageError` saying how to get one
    (the API takes images, not file names)."""
    if not isinstance(value, sitk.Image):
        shown = f" {str(value)[:80]!r}" if isinstance(value, (str, os.PathLike)) else ""
        raise ImageError(f"{name}: expected a SimpleITK image, got {type(value).__name__}"
                         f"{shown}; read files first: wsicl.read_image(path) or "
                         "SimpleITK.ReadImage(path)")
    return value


def image_digest(image: sitk.Image) -> bytes:
    """A 20-byte digest of an image's voxels, pixel type and geometry (equal digests: the
    same image for every purpose here). Safe while other threads read ``image``: the voxels
    are viewed through a private copy, because an array view makes its image unique in
    place, and two threads doing that to one image crash the process."""
    require_image(image)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                        image.GetDirection(), image.GetPixelIDValue())).encode())
    private = sitk.Image(image)
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(private)).data)
    return digest.digest()


class ImageError(ValueError):
    """An image that cannot be segmented as it is, with the reason and the fix."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image: ``size`` and ``spacing`` (mm) in index order (i, j, k),
    ``origin`` (LPS mm, centre of voxel 0) and ``direction`` (3x3, columns are the index
    axes in LPS)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        """Index to LPS-offset matrix: ``direction @ diag(spacing)``."""
        return np.array(self.direction, dtype=float).reshape(3, 3) @ np.diag(self.spacing)

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """``[N, 3]`` continuous indices (i, j, k) to ``[N, 3]`` LPS millimetres."""
        return np.asarray(index, dtype=float) @ self.matrix.T + np.array(self.origin)

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` LPS millimetres to ``[N, 3]`` continuous indices (i, j, k)."""
        offsets = np.asarray(points, dtype=float) - np.array(self.origin)
        return np.linalg.solve(self.matrix, offsets.T).T

    def matches(self, other: "Grid") -> bool:
        """Equal sizes, and geometry equal up to the float32 rounding of NIfTI headers."""
        return self.size == other.size and all(
            np.allclose(x, y, rtol=1e-5, atol=1e-4) for x, y in (
                (self.spacing, other.spacing), (self.origin, other.origin),
                (self.direction, other.direction)))

    def empty_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def array_to_image(self, array: np.ndarray) -> sitk.Image:
        """An image on this grid holding ``array`` (array order (k, j, i))."""
        if tuple(array.shape) != tuple(reversed(self.size)):
            raise ValueError(f"array shape {array.shape} does not fit grid size {self.size}")
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def check_shape(size: Sequence[int], components: int, name: str = "image") -> None:
    """:class:`ImageError` unless an image of ``size`` (i, j, k, ...) with ``components``
    per voxel is a non-empty 3D scalar volume (checkable from a file's header alone)."""
    if len(size) != 3:
        fix = ("pick one volume (e.g. the first time point) before segmenting"
               if len(size) == 4 else "WSICL segments 3D volumes; stack the slices into a volume")
        raise ImageError(f"{name}: is {len(size)}D with size {list(size)}; {fix}")
    if components != 1:
        raise ImageError(f"{name}: has {components} components per voxel (colour or vector "
                         "image); convert it to one scalar channel")
    if min(size) < 1:
        raise ImageError(f"{name}: is empty (size {list(size)})")


SPACING_MM = (1e-4, 1e4)
"""Voxel spacing accepted, in millimetres (0.1 um to 10 m): beyond, a header is corrupt."""
MAX_ORIGIN_MM = 1e7
"""Largest origin coordinate accepted, in millimetres (10 km from the scanner's origin)."""


def check_geometry(spacing: Sequence[float], origin: Sequence[float], name: str = "image"
                   ) -> None:
    """:class:`ImageError` unless the spacing (mm) lies within :data:`SPACING_MM` and the
    origin (mm) within :data:`MAX_ORIGIN_MM` of zero, all finite: absurd values come from
    a corrupt or hostile header and would overflow the geometry computed from them."""
    spacing, origin = np.asarray(spacing, dtype=float), np.asarray(origin, dtype=float)
    if not np.all(np.isfinite(spacing)) or spacing.min() < SPACING_MM[0] or \
            spacing.max() > SPACING_MM[1]:
        raise ImageError(f"{name}: has voxel spacing {[float(f'{v:.6g}') for v in spacing]} mm, "
                         f"outside {SPACING_MM[0]:g}-{SPACING_MM[1]:g} mm; its header is "
                         "corrupt or not in millimetres; fix the spacing and try again")
    if not np.all(np.isfinite(origin)) or np.abs(origin).max() > MAX_ORIGIN_MM:
        raise ImageError(f"{name}: has origin {[float(f'{v:.6g}') for v in origin]} mm, more "
                         f"than {MAX_ORIGIN_MM:g} mm from zero; its header is corrupt; fix "
                         "the origin and try again")


INTEGER_TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                 sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64)
"""Scalar integer pixel types (whose voxels are always finite)."""


def oriented_volume(image: sitk.Image, name: str = "image") -> sitk.Image:
    """``image`` reoriented (:func:`canonical`) as a float32 3D scalar volume, or
    :class:`ImageError` naming the problem. Reoriented before the cast, in its own voxel
    type: the float copy is made once.

    NaN and infinite voxels (common outside a brain mask) are replaced by the smallest
    finite value of the volume; a volume with no finite voxel is an error.
    """
    require_image(image, name)
    check_shape(image.GetSize(), image.GetNumberOfComponentsPerPixel(), name)
    check_geometry(image.GetSpacing(), image.GetOrigin(), name)
    volume = sitk.Cast(canonical(image), sitk.sitkFloat32)
    if image.GetPixelID() in INTEGER_TYPES:
        return volume                           # always finite: no mask of it needed
    array = sitk.GetArrayViewFromImage(volume)
    finite = np.isfinite(array)
    if not finite.all():
        if not finite.any():
            raise ImageError(f"{name}: has no finite voxel (all NaN or infinite)")
        cleaned = np.where(finite, array, array[finite].min()).astype(np.float32)
        repaired = sitk.GetImageFromArray(cleaned)
        repaired.CopyInformation(volume)
        volume = repaired
    return volume


def canonical(image: sitk.Image) -> sitk.Image:
    """The image with its axes permuted and flipped towards L, P, S (no interpolation)."""
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def model_grid(image: sitk.Image, size: int, region: Optional[Region] = None) -> Grid:
    """A ``size^3`` grid spanning exactly ``region`` of ``image`` along its own axes.

    ``region`` is ``(low, high)`` in continuous index coordinates (i, j, k) of ``image``
    (voxel ``n`` covers ``[n - 0.5, n + 0.5]``); the whole image when ``None``.
    """
    source = Grid.of(image)
    low, high = region if region is not None else whole_region(source.size)
    extent = np.asarray(high, dtype=float) - np.asarray(low, dtype=float)
    spacing = tuple(float(v) for v in extent * np.array(source.spacing) / size)
    first_centre = np.asarray(low, dtype=float) + 0.5 * extent / size
    origin = source.index_to_lps(first_centre[None])[0]
    return Grid((size, size, size), spacing, tuple(float(v) for v in origin), source.direction)


def anti_alias_sigmas(source: Grid, target: Grid) -> Tuple[float, ...]:
    """Gaussian sigmas in source voxels, array order, for downsampling ``source`` to
    ``target`` (same axes): ``(factor - 1) / 2`` along axes that shrink, 0 elsewhere."""
    factors = [t / s for t, s in zip(target.spacing, source.spacing)]
    return tuple(max(0.0, (f - 1.0) / 2.0) for f in reversed(factors))


NORMALISATIONS = ("minmax", "robust")


def normalise(array: np.ndarray, name: str = "image", method: str = "minmax") -> np.ndarray:
    """Intensities to [0, 1] (float32): ``"minmax"`` maps the minimum and maximum,
    ``"robust"`` the 0.5th / 99.5th percentiles (clipping beyond); a constant volume is an
    error."""
    low, high = float(array.min()), float(array.max())
    if not high - low > 1e-8 * max(1.0, abs(high)):
        raise ImageError(f"{name}: is constant (every voxel {low:g}); nothing to segment")
    if method == "robust":
        return robust_unit_range(torch.from_numpy(np.ascontiguousarray(array))).numpy()
    if method != "minmax":
        raise ValueError(f"unknown normalisation {method!r}; use one of "
                         f"{', '.join(NORMALISATIONS)}")
    return ((array - low) / (high - low)).astype(np.float32)


@dataclasses.dataclass
class PreparedImage:
    """An image ready for the network.

    Attributes:
        array: ``[S, S, S]`` float32 in [0, 1], array order on ``grid``.
        grid: the model grid (LPS geometry).
        source: geometry of the image as given (before reorientation).
        name: for messages.
        oriented: geometry of the reoriented image, whose index coordinates regions use.
    """

    array: np.ndarray
    grid: Grid
    source: Grid
    name: str
    oriented: Optional[Grid] = None


def prepare(image: sitk.Image, size: int, name: str = "image", region: Optional[Region] = None,
            normalisation: str = "minmax", check: Optional[Callable[[], None]] = None
            ) -> PreparedImage:
    """Reorients, anti-aliases, resamples ``region`` (continuous index coordinates of the
    reoriented image; the whole image when ``None``) to the ``size^3`` model grid and
    normalises (``"minmax"`` or ``"robust"``, see :func:`normalise`). ``check()`` runs
    between these steps (it may raise, e.g. to cancel: on a large volume each takes
    seconds)."""
    check = check or (lambda: None)
    oriented = oriented_volume(image, name)     # at most two float copies live at once
    check()
    grid = model_grid(oriented, size, region)
    placed = Grid.of(oriented)
    sigmas = anti_alias_sigmas(placed, grid)
    if any(sigmas):
        smoothed = gaussian_filter(sitk.GetArrayViewFromImage(oriented), sigmas,
                                   mode="nearest")
        del oriented            # before the copy into an image, not after
        oriented = sitk.GetImageFromArray(smoothed)
        del smoothed
        oriented.SetSpacing(placed.spacing)
        oriented.SetOrigin(placed.origin)
        oriented.SetDirection(placed.direction)
        check()
    resampled = sitk.Resample(oriented, grid.empty_image(), sitk.Transform(), sitk.sitkLinear,
                              0.0, sitk.sitkFloat32, True)
    array = normalise(sitk.GetArrayFromImage(resampled), name, normalisation)
    return PreparedImage(array, grid, Grid.of(image), name, Grid.of(oriented))


def canonical_grid(image: sitk.Image, name: str = "image") -> Grid:
    """Geometry of ``image`` reoriented as :func:`prepare` does, from its header alone: ITK
    orients a 2x2x2 stand-in with the same direction, and the axis permutation and flips
    it chose are applied to the real size, spacing and origin (no voxel is read or
    copied). Errors (not an image, not a 3D scalar volume) name the image ``name``."""
    require_image(image, name)
    check_shape(image.GetSize(), image.GetNumberOfComponentsPerPixel(), name)
    grid = Grid.of(image)
    stand_in = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    stand_in.SetDirection(grid.direction)
    axes = np.array(grid.direction, dtype=float).reshape(3, 3)
    turned = np.array(canonical(stand_in).GetDirection(), dtype=float).reshape(3, 3)
    cosines = axes.T @ turned                   # [old axis, new axis]: 0 or +-1
    order = np.argmax(np.abs(cosines), axis=0)  # the old axis behind each new one
    flipped = cosines[order, range(3)] < 0
    corner = np.where(flipped, np.array(grid.size)[order] - 1, 0)
    first = np.zeros(3)
    first[order] = corner                       # old index of the new voxel 0
    return Grid(tuple(int(grid.size[a]) for a in order),
                tuple(float(grid.spacing[a]) for a in order),
                tuple(float(v) for v in grid.index_to_lps(first[None])[0]),
                tuple(float(v) for v in turned.ravel()))


def box_corners(low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of the axis-aligned box ``[low, high]``."""
    return np.array([[(low, high)[bit][axis] for axis, bit in enumerate(bits)]
                     for bits in np.ndindex(2, 2, 2)], dtype=float)


def box_corners_lps(low: Sequence[float], high: Sequence[float], space: str, source: Grid
                    ) -> np.ndarray:
    """The 8 corners ``[8, 3]`` (LPS mm) of a box with inclusive corners ``low``/``high``
    in ``space`` coordinates of ``source``. In ``voxel`` space each voxel counts with its
    full extent, except along an axis where ``low == high`` (a 2D box on that slice)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if low.shape != (3,) or high.shape != (3,) or np.any(high < low):
        raise ValueError(f"box min {low.tolist()} / max {high.tolist()} must be 3 coordinates "
                         "with min <= max")
    if space == "voxel":
        low, high = voxel_box_faces(low, high)
    return to_lps(box_corners(low, high), space, source)


def voxel_box_faces(low: Sequence[float], high: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """The continuous-index extent of an inclusive voxel box: each voxel with its full extent
    (half a voxel beyond the centres), except along an axis where ``low == high`` (a 2D box
    on that slice, kept at zero thickness)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    margin = np.where(high == low, 0.0, 0.5)
    return low - margin, high + margin


def nonzero_faces(array: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The continuous-index extent (i, j, k) of the non-zero voxels of a ``(k, j, i)``
    array, to their outer faces (voxel ``n`` covers ``[n - 0.5, n + 0.5]``); the array
    must have a non-zero voxel."""
    present = [np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != axis)))
               for axis in range(3)]
    low = np.array([p[0] for p in present], dtype=float)[::-1] - 0.5
    high = np.array([p[-1] for p in present], dtype=float)[::-1] + 0.5
    return low, high


def to_lps(points: np.ndarray, space: str, source: Grid) -> np.ndarray:
    """``[N, 3]`` coordinates in ``space`` (``voxel`` indices of ``source``, ``LPS`` or
    ``RAS`` mm) to LPS millimetres."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if space == "voxel":
        return source.index_to_lps(points)
    if space == "LPS":
        return points
    if space == "RAS":
        return points * LPS_RAS_FLIP
    raise ValueError(f"unknown coordinate space {space!r}; use one of {', '.join(SPACES)}")


def _grid_array_index(lps: np.ndarray, grid: Grid) -> np.ndarray:
    """LPS mm ``[N, 3]`` to continuous model-grid array indices ``[N, 3]`` (a, b, c)."""
    return grid.lps_to_index(lps)[:, ::-1]


def covered_indices(lo: float, hi: float) -> Tuple[int, int]:
    """Inclusive first and last voxel whose centre lies in ``[lo, hi]`` (continuous indices);
    when none does (an extent thinner than a voxel), the nearest voxel on both ends."""
    start, stop = math.ceil(lo - 1e-6), math.floor(hi + 1e-6)
    if start > stop:
        start = stop = int(round((lo + hi) / 2))
    return start, stop


def box_to_model(low: Sequence[float], high: Sequence[float], space: str, prepared: PreparedImage
                 ) -> IndexBox:
    """A box to half-open model-grid array ranges.

    ``low``/``high`` are inclusive corners in ``space`` coordinates, in (x, y, z) / (i, j, k)
    order. In ``voxel`` space each voxel counts with its full extent; along an axis where
    ``low == high`` the box is 2D on that slice and stays one model slice thick.
    Raises :class:`PromptOutsideError` if the box misses the image, clips it otherwise.
    """
    index = _grid_array_index(box_corners_lps(low, high, space, prepared.source),
                              prepared.grid)
    ranges = []
    size = prepared.array.shape
    for axis in range(3):
        start, stop = covered_indices(index[:, axis].min(), index[:, axis].max())
        if stop < 0 or start >= size[axis]:
            raise PromptOutsideError(
                f"{prepared.name}: box min {list(low)} max {list(high)} ({space}) lies "
                "outside the image; check the coordinate system and the image it belongs to")
        ranges.append((max(start, 0), min(stop, size[axis] - 1) + 1))
    return tuple(ranges)


def point_to_model(position: Sequence[float], space: str, prepared: PreparedImage,
                   radius: int = 0) -> IndexPoint:
    """A point to the nearest model-grid array index (a, b, c).

    A point more than ``radius`` model voxels outside the grid is a
    :class:`PromptOutsideError`.
    """
    position = np.asarray(position, dtype=float)
    if position.shape != (3,):
        raise ValueError(f"point {position.tolist()} must have 3 coordinates")
    index = np.rint(_grid_array_index(to_lps(position, space, prepared.source),
                                      prepared.grid)[0]).astype(int)
    size = prepared.array.shape
    if any(c + radius < 0 or c - radius >= s for c, s in zip(index, size)):
        raise PromptOutsideError(
            f"{prepared.name}: point {position.tolist()} ({space}) lies outside the image; "
            "check the coordinate system and the image it belongs to")
    return tuple(int(c) for c in index)


def mask_to_model(mask: sitk.Image, prepared: PreparedImage) -> np.ndarray:
    """A 0/1 mask on its image's grid as a float32 0/1 prompt channel on the model grid.

    The mask is resampled linearly, as the image is, and kept where it covers at least half
    a model voxel; a structure thinner than that keeps every model voxel it touches.
    """
    coverage = sitk.GetArrayFromImage(sitk.Resample(
        sitk.Cast(mask, sitk.sitkFloat32), prepared.grid.empty_image(), sitk.Transform(),
        sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    channel = coverage >= 0.5
    if not channel.any():
        channel = coverage > 0
    if not channel.any():
        raise PromptOutsideError(f"{prepared.name}: the mask lies outside the model's view of "
                                 "the image")
    return channel.astype(np.float32)


def to_source_grid(values: np.ndarray, grid: Grid, reference: sitk.Image) -> sitk.Image:
    """Model-grid ``values`` (array order) linearly resampled onto ``reference``'s grid.

    Within the model grid's extent (its voxels' outer faces) values near the faces come
    from the nearest model voxel; beyond it (outside a crop) they are 0.
    """
    image = grid.array_to_image(np.ascontiguousarray(values, dtype=np.float32))
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32, True)
    if _covers(grid, reference):
        return resampled  # the grid covers the whole reference (a whole view): no cut-off
    return resampled * _inside(grid, values.shape, reference)


SLAB_VOXELS = 1 << 22
"""Voxels of the reference resampled at once by :func:`mask_on_grid` (16 MB as float32)."""


def mask_on_grid(values: np.ndarray, grid: Grid, reference: sitk.Image, level: float = 0.5,
                 check: Optional[Callable[[], None]] = None) -> sitk.Image:
    """``threshold(to_source_grid(values, grid, reference), level)``, computed slab by slab
    of ``reference``'s slices (index ``k``), so that memory beyond the uint8 mask is one
    slab's floats (:data:`SLAB_VOXELS`); ``check()`` runs between slabs (it may raise, e.g.
    to cancel)."""
    image = grid.array_to_image(np.ascontiguousarray(values, dtype=np.float32))
    covered = _covers(grid, reference)
    size = reference.GetSize()
    step = max(1, SLAB_VOXELS // (size[0] * size[1]))
    mask = np.zeros(size[::-1], dtype=np.uint8)
    for start in range(0, size[2], step):
        if check is not None:
            check()
        slab = sitk.Image(size[0], size[1], min(step, size[2] - start), sitk.sitkUInt8)
        slab.SetSpacing(reference.GetSpacing())
        slab.SetDirection(reference.GetDirection())
        slab.SetOrigin(reference.TransformIndexToPhysicalPoint((0, 0, start)))
        resampled = sitk.Resample(image, slab, sitk.Transform(), sitk.sitkLinear, 0.0,
                                  sitk.sitkFloat32, True)
        if not covered:
            resampled = resampled * _inside(grid, values.shape, slab)
        mask[start:start + slab.GetSize()[2]] = sitk.GetArrayViewFromImage(resampled) >= level
    result = sitk.GetImageFromArray(mask)
    result.CopyInformation(reference)
    return result


def _covers(grid: Grid, reference: sitk.Image) -> bool:
    """Whether the model grid's extent holds every voxel centre of ``reference``."""
    target = Grid.of(reference)
    centres = box_corners(np.zeros(3), np.array(target.size) - 1.0)
    index = grid.lps_to_index(target.index_to_lps(centres))
    return bool(np.all(index >= -0.5 - 1e-6) and
                np.all(index <= np.array(grid.size) - 0.5 + 1e-6))


def _inside(grid: Grid, shape: Sequence[int], reference: sitk.Image) -> sitk.Image:
    """1 where a voxel centre of ``reference`` lies within the model grid, else 0."""
    ones = grid.array_to_image(np.ones(shape, dtype=np.float32))
    return sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                         sitk.sitkFloat32)


def threshold(probability: sitk.Image, level: float = 0.5) -> sitk.Image:
    """uint8 0/1 mask of ``probability >= level`` on the same grid."""
    return sitk.Cast(sitk.BinaryThreshold(probability, lowerThreshold=level,
                                          upperThreshold=float("inf"), insideValue=1,
                                          outsideValue=0), sitk.sitkUInt8)
