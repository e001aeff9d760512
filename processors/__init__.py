"""hepprep processors: the analyses (coffea processors) and the pure awkward functions they call.

A new analysis subclasses `SkimProcessor` and implements ``select(events, cutflow)``
(`processors.base`); `DiTauProcessor` is the default one, `MuTauProcessor` the second
(the mu-tau_h channel), `JetProcessor` a jet-level one (one row per jet, PFNano).
"""

from processors.base import Cutflow, InputFailure, NoOptions, ProcessorError, SkimProcessor
from processors.ditau import CUTS, DiTauProcessor, dataset_weight
from processors.features import FEATURES, ditau_features
from processors.jets import JetOptions, JetProcessor
from processors.mutau import MuTauOptions, MuTauProcessor
from processors.parts import ROW_EVENT, SKIM_SCHEMA
from processors.physics import delta_phi, delta_r, pair_mass_pt, transverse_mass, vector_sum_pt
from processors.profiles import InputProfile, ProfileError, detect_profile
from processors.selection import good_tau_mask, select_jets, select_tau_pair, select_taus, sort_by_pt
from processors.truth import gen_truth, truth_columns

__all__ = ["CUTS", "FEATURES", "ROW_EVENT", "SKIM_SCHEMA", "Cutflow", "DiTauProcessor", "InputFailure", "InputProfile",
           "JetOptions", "JetProcessor", "MuTauOptions", "MuTauProcessor", "NoOptions", "ProcessorError", "ProfileError",
           "SkimProcessor", "dataset_weight", "delta_phi", "delta_r", "detect_profile", "ditau_features", "gen_truth",
           "good_tau_mask", "pair_mass_pt", "select_jets", "select_tau_pair", "select_taus", "sort_by_pt",
           "transverse_mass", "truth_columns", "vector_sum_pt"]
