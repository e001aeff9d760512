"""Core (configuration, prepare, evaluate): ``[prepare.objects]`` and ``[evaluate.tagger]``, rows that are jets.

A jet-level skim (`processors.jets`) has variable-length list columns (``cand_*``, ``sv_*``)
and is usually trained with the tagger reweighting: every class flat in the jet's
(pt, eta). `ObjectsConfig` names the list columns that prepare standardises element by
element, and `FlattenConfig` the binning of the reweighting; `FlattenConfig.bin_of` gives
each row its bin. The weights themselves are prepare's (`analysis.prepare.flatten`).
`TaggerEvaluationConfig` says how a jet-level evaluation reads the classes: which is the
background, which are signals, the working points and the pt bins (`analysis.evaluate.jets`;
the tagger models' own settings are ``[train.tagger]``, `analysis.core.tagger_config`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import model_validator

from analysis.core.target import StrictModel
from analysis.errors import StageInputError

__all__ = ["FlattenConfig", "ObjectsConfig", "TaggerEvaluationConfig"]

MAX_FLATTEN_BINS = 1_000_000  # cells of the binning (the histograms are dense per split and class)


class FlattenConfig(StrictModel):
    """``[prepare.objects.flatten]``: train_weight also flat in the bins of these columns, per class.

    A row outside the edges counts in the first or last bin of that variable (no row is
    dropped); a missing (NaN) value is an error.
    """

    variables: list[str]  # flat columns of the skim, e.g. ["jet_pt", "jet_eta"]
    bins: list[list[float]]  # bin edges of each variable, increasing, at least two

    @model_validator(mode="after")
    def _check(self) -> FlattenConfig:
        if not self.variables:
            raise ValueError("variables: name at least one column, e.g. [\"jet_pt\", \"jet_eta\"]")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"variables: listed twice in {self.variables}")
        if len(self.bins) != len(self.variables):
            raise ValueError(f"bins: {len(self.bins)} lists of edges for {len(self.variables)} variables "
                             f"({', '.join(self.variables)}); give one list per variable")
        for name, edges in zip(self.variables, self.bins):
            if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"bins: the edges of {name} must be at least two increasing numbers, got {edges}")
        if int(np.prod(self.shape)) > MAX_FLATTEN_BINS:
            raise ValueError(f"bins: {int(np.prod(self.shape))} cells; use at most {MAX_FLATTEN_BINS}")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """Bins per variable."""
        return tuple(len(edges) - 1 for edges in self.bins)

    @property
    def n_bins(self) -> int:
        return int(np.prod(self.shape))

    def bin_of(self, columns: Mapping[str, np.ndarray], *, where: str) -> np.ndarray:
        """The flat bin index (int64, ``0 .. n_bins - 1``) of each row.

        Parameters
        ----------
        columns : {variable: float array (rows,)}
        where : the file or split, for the error a NaN value gives
        """
        index = []
        for name, edges in zip(self.variables, self.bins):
            x = np.asarray(columns[name], dtype=np.float64)
            if np.isnan(x).any():
                raise StageInputError(f"{where}: prepare.objects.flatten variable {name!r} is NaN in "
                                      f"{int(np.isnan(x).sum())} row(s); every trained row needs a bin")
            # The inner edges only: below the first edge is bin 0, above the last the last bin.
            index.append(np.searchsorted(np.asarray(edges[1:-1]), x, side="right"))
        if not len(index[0]):
            return np.zeros(0, dtype=np.int64)
        return np.ravel_multi_index(index, self.shape).astype(np.int64)


class ObjectsConfig(StrictModel):
    """``[prepare.objects]``: list columns to standardise, and the flat reweighting (README "Jet-level datasets")."""

    # list<float32> columns standardised element-wise with the statistics of every real
    # entry of the training rows' lists (stats.json "constituents"); e.g. ["cand_deta", "sv_dxysig"]
    constituent_features: list[str] = []
    flatten: FlattenConfig | None = None  # None: train_weight balances the classes only

    @model_validator(mode="after")
    def _check(self) -> ObjectsConfig:
        twice = sorted({f for f in self.constituent_features if self.constituent_features.count(f) > 1})
        if twice:
            raise ValueError(f"constituent_features: listed twice: {', '.join(twice)}")
        return self


class TaggerEvaluationConfig(StrictModel):
    """``[evaluate.tagger]``: the classes, working points and pt bins of a jet tagger's evaluation.

    The class names are the prepared folder's (stats.json ``target.classes``; a binary target's
    are ``background`` and ``signal``), so they are checked when the evaluation opens it.
    """

    background: str | None = None  # None: the class named "QCD" if there is one, else class 0
    signal: list[str] | None = None  # signal classes, each against the background; None: all others
    efficiencies: list[float] = [0.3, 0.5, 0.7]  # signal efficiencies at which 1/eps_B is quoted
    pt_column: str = "jet_pt"  # the jets' pt (GeV), for the bins
    # pt bin edges, or a number of bins of equal weight (weighted quantiles of the test jets' pt)
    pt_bins: int | list[float] = 5
    eta_column: str = "jet_eta"  # a jet-level regression's response against eta

    @model_validator(mode="after")
    def _check(self) -> TaggerEvaluationConfig:
        if not self.efficiencies or any(not 0 < e < 1 for e in self.efficiencies):
            raise ValueError(f"efficiencies: signal efficiencies in (0, 1), at least one, got {self.efficiencies}")
        if len(set(self.efficiencies)) != len(self.efficiencies):
            raise ValueError(f"efficiencies: listed twice in {self.efficiencies}")
        if self.signal is not None:
            if not self.signal or len(set(self.signal)) != len(self.signal):
                raise ValueError(f"signal: name each signal class once, at least one, got {self.signal}")
            if self.background in self.signal:
                raise ValueError(f"signal: {self.background!r} is the background class")
        if isinstance(self.pt_bins, int):
            if self.pt_bins < 1:
                raise ValueError(f"pt_bins: a number of bins >= 1 or a list of edges, got {self.pt_bins}")
        elif len(self.pt_bins) < 2 or any(b <= a for a, b in itertools.pairwise(self.pt_bins)):
            raise ValueError(f"pt_bins: the edges must be at least two increasing numbers, got {self.pt_bins}")
        return self

    def classes(self, class_names: Sequence[str]) -> tuple[int, list[int]]:
        """(background index, signal indices) among ``class_names``.

        Raises ValueError naming the key (``evaluate.tagger.background: unknown class ...``).
        """
        names = list(class_names)
        known = ", ".join(names)
        if self.background is None:
            background = names.index("QCD") if "QCD" in names else 0
        elif self.background in names:
            background = names.index(self.background)
        else:
            raise ValueError(f"evaluate.tagger.background: unknown class {self.background!r}; the classes are {known}")
        unknown = [s for s in self.signal or () if s not in names]
        if unknown:
            raise ValueError(f"evaluate.tagger.signal: unknown class {', '.join(map(repr, unknown))}; "
                             f"the classes are {known}")
        if self.signal is not None and names[background] in self.signal:
            raise ValueError(f"evaluate.tagger.signal: {names[background]!r} is the background class "
                             "(evaluate.tagger.background, default QCD or class 0); a class is one or the other")
        signals = ([names.index(s) for s in self.signal] if self.signal is not None
                   else [k for k in range(len(names)) if k != background])
        return background, signals
