"""Core (all stages): jet images built from a jet-level skim's constituent lists, one function for the loader and the plots.

A jet-level skim (`processors.jets`) stores each jet's constituents as variable-length
lists, never as dense images: `jet_images` makes the images when they are wanted. It is
here, below the stages and the processors, because training's loader and evaluation's plots
(two stages that never import each other) both call it, and the particle classes it sums
over are the ones the processor writes (`PARTICLE_CLASSES`, imported by `processors.jets`).

An image is C x 40 x 40 pixels of 0.02 x 0.02 in (Delta eta, Delta phi) around the jet axis
(PHYSICS.md "Jet-level data"): ``image[c, i, j]`` sums the pt of the constituents of
channel ``c`` with Delta phi in row ``i`` and Delta eta in column ``j`` (row 0 at the most
negative Delta phi: shown with ``imshow(origin="lower")``, up is +Delta phi). A
constituent is inside when ``-W/2 <= x < W/2`` on both axes (W = pixels x pixel size);
the rest are left out, so each image sums exactly the pt of its constituents inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa

__all__ = ["DEFAULT_CHANNELS", "IMAGE_PIXELS", "PARTICLE_CLASSES", "PIXEL_SIZE", "jet_images", "list_offsets"]

# The particle class of a constituent (`cand_class`): its code is the position here.
PARTICLE_CLASSES = ("charged_hadron", "neutral_hadron", "photon", "electron", "muon")
_CODE = {name: code for code, name in enumerate(PARTICLE_CLASSES)}
# Image channels (PHYSICS.md): name -> the particle classes summed in it; tracks are the charged ones.
DEFAULT_CHANNELS: dict[str, tuple[int, ...]] = {
    "all": tuple(range(len(PARTICLE_CLASSES))),
    "photon": (_CODE["photon"],),
    "charged_hadron": (_CODE["charged_hadron"],),
    "neutral_hadron": (_CODE["neutral_hadron"],),
    "track": (_CODE["charged_hadron"], _CODE["electron"], _CODE["muon"]),
}
IMAGE_PIXELS = 40  # pixels on each side
PIXEL_SIZE = 0.02  # in eta and in phi: a window of +-0.4, the AK4 jet radius


def list_offsets(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat values) of one list per jet.

    ``values``: an awkward ``var * number`` array, a pyarrow list array (a Parquet list
    column as read), or a sequence of 1-d numpy arrays. Offsets are int64, from 0, one
    more than the jets.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, (pa.ListArray, pa.LargeListArray)):
        offsets = np.asarray(values.offsets, dtype=np.int64)
        flat = values.values.to_numpy(zero_copy_only=False)
        return offsets - offsets[0], np.asarray(flat[offsets[0]:offsets[-1]])
    if isinstance(values, ak.Array):
        counts = ak.to_numpy(ak.num(values, axis=1)).astype(np.int64)
        flat = ak.to_numpy(ak.flatten(values, axis=1))
    else:
        arrays = [np.asarray(v).ravel() for v in values]
        counts = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.asarray(flat)


def jet_images(deta: Any, dphi: Any, pt: Any, particle_class: Any, *,
               channels: Mapping[str, Sequence[int]] = DEFAULT_CHANNELS, n_pixels: int = IMAGE_PIXELS,
               pixel_size: float = PIXEL_SIZE, rotate_to: Any = None) -> np.ndarray:
    """Pt-weighted images of jets from their constituents, one channel per group of particle classes.

    Parameters
    ----------
    deta, dphi, pt, particle_class : one list per jet (see `list_offsets`), the same lengths
        The skim's ``cand_deta``, ``cand_dphi``, ``cand_pt`` (or any weight, ``cand_ptrel``
        for normalised images) and ``cand_class`` (codes of `PARTICLE_CLASSES`).
    channels : mapping of name -> particle class codes
        The image's channels in order; a constituent goes into every channel naming its class.
    n_pixels, pixel_size : int, float
        The grid: ``n_pixels`` x ``n_pixels`` of ``pixel_size`` (PHYSICS.md: 40, 0.02).
    rotate_to : float array (jets, 2) or None
        Per jet, a direction (Delta eta, Delta phi), such as the leading subjet's
        (``jet_sj1_deta``, ``jet_sj1_dphi``): the constituents are rotated about the jet axis
        so that it points up (+Delta phi). A NaN or zero direction leaves that jet unrotated.

    Returns
    -------
    float32 numpy array (jets, channels, n_pixels, n_pixels)

    Example
    -------
    >>> jet_images([[0.0, 0.1]], [[0.0, -0.5]], [[10.0, 3.0]], [[0, 2]]).sum(axis=(2, 3))[0, 0]
    10.0
    """
    offsets, x = list_offsets(deta)
    y, weight, cls = (list_offsets(v)[1] for v in (dphi, pt, particle_class))
    n_jets = len(offsets) - 1
    if not (len(x) == len(y) == len(weight) == len(cls)):
        raise ValueError(f"jet_images: the constituent lists differ in length ({len(x)} deta, {len(y)} dphi, "
                         f"{len(weight)} pt, {len(cls)} class values)")
    x, y = x.astype(np.float64), y.astype(np.float64)
    jet = np.repeat(np.arange(n_jets), np.diff(offsets))
    if rotate_to is not None:
        x, y = _rotated(x, y, np.asarray(rotate_to, dtype=np.float64).reshape(n_jets, 2)[jet])
    half = 0.5 * n_pixels * pixel_size
    inside = (x >= -half) & (x < half) & (y >= -half) & (y < half)
    # floor of a value just below the upper edge can round up to n_pixels: clamp it (inside is decided above)
    col = np.minimum(np.floor((x[inside] + half) / pixel_size).astype(np.int64), n_pixels - 1)
    row = np.minimum(np.floor((y[inside] + half) / pixel_size).astype(np.int64), n_pixels - 1)
    jet, w, cls = jet[inside], weight[inside].astype(np.float64), cls[inside].astype(np.int64)
    n_channels = len(channels)
    pixel = row * n_pixels + col
    index, weights = [], []
    for c, classes in enumerate(channels.values()):
        member = np.isin(cls, np.asarray(list(classes), dtype=np.int64))
        index.append((jet[member] * n_channels + c) * n_pixels * n_pixels + pixel[member])
        weights.append(w[member])
    size = n_jets * n_channels * n_pixels * n_pixels
    flat = np.bincount(np.concatenate(index) if index else np.zeros(0, np.int64),
                       weights=np.concatenate(weights) if weights else np.zeros(0), minlength=size)
    return flat.astype(np.float32).reshape(n_jets, n_channels, n_pixels, n_pixels)


def _rotated(x: np.ndarray, y: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) rotated about 0 so that ``direction`` (a, b) becomes (0, |(a, b)|), per constituent."""
    a, b = direction[:, 0], direction[:, 1]
    r = np.hypot(a, b)
    ok = np.isfinite(r) & (r > 0)
    cos = np.where(ok, b / np.where(ok, r, 1.0), 1.0)
    sin = np.where(ok, a / np.where(ok, r, 1.0), 0.0)
    return x * cos - y * sin, x * sin + y * cos
