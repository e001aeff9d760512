"""Core (all stages): the one feature registry — each skim column (a feature, or truth to predict), its type, label and unit.

The di-tau processor's output schema (`processors.parts.SKIM_SCHEMA`), the configuration's
default training features (`analysis.config.DEFAULT_FEATURES`) and the plots' axis labels
all read this table, so a feature is declared once. A name that is not registered (a
column of a user's own processor) still gets a label and a unit, guessed from its name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANALYSIS_COLUMNS", "DEFAULT_FEATURES", "DERIVED_FEATURES", "DITAU_COLUMNS", "JET_COLUMNS",
           "JET_DEFAULT_FEATURES", "MUTAU_COLUMNS", "MUTAU_DEFAULT_FEATURES", "MUTAU_DERIVED_FEATURES", "TRUTH_COLUMNS",
           "Feature", "feature", "feature_differences"]


@dataclass(frozen=True)
class Feature:
    """One feature column: its name, Arrow type (``float32``, ``int8``, ``int16``, ``list<float32>``), axis label and unit."""

    name: str
    dtype: str
    label: str
    unit: str = ""


def _objects(prefix: str, symbol: str, fields: tuple[tuple[str, str, str, str], ...]) -> list[Feature]:
    return [Feature(f"{prefix}_{name}", dtype, label.replace("X", symbol), unit)
            for name, dtype, label, unit in fields]


_TAU = (("pt", "float32", r"$p_{T}^{X}$", "GeV"), ("eta", "float32", r"$\eta^{X}$", ""),
        ("phi", "float32", r"$\phi^{X}$", "rad"), ("mass", "float32", r"$m^{X}$", "GeV"),
        ("charge", "int8", r"$q^{X}$", ""), ("decayMode", "int8", r"X decay mode", ""),
        ("iso", "float32", r"$X$ rel. isolation", ""))
_JET = (("pt", "float32", r"$p_{T}^{X}$", "GeV"), ("eta", "float32", r"$\eta^{X}$", ""),
        ("phi", "float32", r"$\phi^{X}$", "rad"), ("mass", "float32", r"$m^{X}$", "GeV"),
        ("btag", "float32", r"$X$ b-tag discriminant", ""))

# The derived features of PHYSICS.md ("Features"), in the order of DESIGN.md.
DERIVED_FEATURES: tuple[Feature, ...] = (
    Feature("m_vis", "float32", r"$m_{vis}^{\tau\tau}$", "GeV"),
    Feature("pt_vis", "float32", r"$p_{T,vis}^{\tau\tau}$", "GeV"),
    Feature("dr_tautau", "float32", r"$\Delta R(\tau_1, \tau_2)$"),
    Feature("mt_tau1", "float32", r"$m_{T}(\tau_1, p_{T}^{miss})$", "GeV"),
    Feature("mt_tau2", "float32", r"$m_{T}(\tau_2, p_{T}^{miss})$", "GeV"),
    Feature("mjj", "float32", r"$m_{jj}$", "GeV"),
    Feature("ptjj", "float32", r"$p_{T}^{jj}$", "GeV"),
    Feature("jdeta", "float32", r"$|\Delta\eta_{jj}|$"),
    Feature("pt_h", "float32", r"$p_{T}^{H}$", "GeV"),
)

# The generator truth (processors.truth), for simulation (NaN for data and where undefined):
# regression targets, never training inputs, so in no default feature list.
TRUTH_COLUMNS: tuple[Feature, ...] = (
    Feature("gen_m_tautau", "float32", r"$m_{\tau\tau}^{gen}$", "GeV"),
    Feature("gen_pt_h", "float32", r"$p_{T}^{H,gen}$", "GeV"),
)

# Every column the di-tau processor writes, in the skim's column order (DESIGN.md "Skim
# Parquet", then the truth), after the identity and bookkeeping columns.
DITAU_COLUMNS: tuple[Feature, ...] = (
    *_objects("tau1", r"\tau_1", _TAU), *_objects("tau2", r"\tau_2", _TAU),
    *_objects("jet1", "j_1", _JET), *_objects("jet2", "j_2", _JET),
    Feature("met_pt", "float32", r"$p_{T}^{miss}$", "GeV"), Feature("met_phi", "float32", r"$\phi^{miss}$", "rad"),
    Feature("npv", "int16", r"$N_{PV}$"), Feature("njets", "int16", r"$N_{jets}$"),
    Feature("ntaus", "int16", r"$N_{\tau}$"),
    *DERIVED_FEATURES,
    *TRUTH_COLUMNS,
)

# Training inputs by default: kinematics without azimuthal angles (the problem is symmetric
# in phi), the derived features of PHYSICS.md, and b-tags for the ttbar background.
DEFAULT_FEATURES: tuple[str, ...] = (
    "tau1_pt", "tau1_eta", "tau2_pt", "tau2_eta",
    "jet1_pt", "jet1_eta", "jet1_btag", "jet2_pt", "jet2_eta", "jet2_btag",
    "met_pt", "njets",
    *(f.name for f in DERIVED_FEATURES),
)

# The mu-tau_h analysis (processors.mutau, PHYSICS.md "The mu-tau_h channel"): the derived
# features of skim.cxx, its jdeta signed.
MUTAU_DERIVED_FEATURES: tuple[Feature, ...] = (
    Feature("m_vis", "float32", r"$m_{vis}^{\mu\tau}$", "GeV"),
    Feature("pt_vis", "float32", r"$p_{T,vis}^{\mu\tau}$", "GeV"),
    Feature("dr_mutau", "float32", r"$\Delta R(\mu, \tau)$"),
    Feature("mt_mu", "float32", r"$m_{T}(\mu, p_{T}^{miss})$", "GeV"),
    Feature("mt_tau", "float32", r"$m_{T}(\tau, p_{T}^{miss})$", "GeV"),
    Feature("mjj", "float32", r"$m_{jj}$", "GeV"),
    Feature("ptjj", "float32", r"$p_{T}^{jj}$", "GeV"),
    Feature("jdeta", "float32", r"$\eta_{j_1} - \eta_{j_2}$"),
)
_MUON = (*_TAU[:5], ("iso", "float32", r"$X$ rel. isolation $I_{03}$", ""))

# Every feature column the mu-tau_h processor writes, in order (jets NaN when absent).
MUTAU_COLUMNS: tuple[Feature, ...] = (
    *_objects("mu", r"\mu", _MUON), *_objects("tau", r"\tau", _TAU),
    *_objects("jet1", "j_1", _JET[:4]), *_objects("jet2", "j_2", _JET[:4]),
    Feature("met_pt", "float32", r"$p_{T}^{miss}$", "GeV"), Feature("met_phi", "float32", r"$\phi^{miss}$", "rad"),
    Feature("npv", "int16", r"$N_{PV}$"), Feature("njets", "int16", r"$N_{jets}$"),
    *MUTAU_DERIVED_FEATURES,
)

# Its training inputs by default: the kinematics without azimuths, the isolations (the
# skim cuts on neither, the fakes of W+jets and Z -> mumu are less isolated), the jets.
MUTAU_DEFAULT_FEATURES: tuple[str, ...] = (
    "mu_pt", "mu_eta", "mu_iso", "tau_pt", "tau_eta", "tau_mass", "tau_decayMode", "tau_iso",
    "jet1_pt", "jet1_eta", "jet2_pt", "jet2_eta", "met_pt", "njets",
    *(f.name for f in MUTAU_DERIVED_FEATURES),
)

# The jet-level processor (processors.jets, one row per jet): jet features, truth, the energy-scale
# target, then the constituents and secondary vertices as lists (one entry per constituent / vertex).
_LIST = "list<float32>"
JET_COLUMNS: tuple[Feature, ...] = (
    Feature("jet_index", "int16", "jet index in the event"),
    *_objects("jet", "j", _JET[:4]),
    Feature("jet_msoftdrop", "float32", r"$m_{SD}^{j}$", "GeV"),
    Feature("jet_tau21", "float32", r"$\tau_{21}$"), Feature("jet_tau32", "float32", r"$\tau_{32}$"),
    Feature("jet_area", "float32", r"jet area $A$"),
    Feature("jet_ncand", "int16", r"$N_{constituents}$"), Feature("jet_nsv", "int16", r"$N_{SV}$"),
    Feature("jet_sj1_deta", "float32", r"$\Delta\eta(sj_1, j)$"),
    Feature("jet_sj1_dphi", "float32", r"$\Delta\phi(sj_1, j)$", "rad"),
    Feature("jet_label", "int8", "jet truth label"),
    Feature("jet_hadron_flavour", "int8", "hadron flavour"), Feature("jet_parton_flavour", "int16", "parton flavour"),
    Feature("jes_target", "float32", r"$p_{T}^{gen} / p_{T}^{j}$"),
    Feature("cand_pt", _LIST, r"$p_{T}^{cand}$", "GeV"), Feature("cand_deta", _LIST, r"$\Delta\eta(cand, j)$"),
    Feature("cand_dphi", _LIST, r"$\Delta\phi(cand, j)$", "rad"),
    Feature("cand_logpt", _LIST, r"$\log p_{T}^{cand}$"), Feature("cand_loge", _LIST, r"$\log E^{cand}$"),
    Feature("cand_ptrel", _LIST, r"$p_{T}^{cand} / p_{T}^{j}$"), Feature("cand_erel", _LIST, r"$E^{cand} / E^{j}$"),
    Feature("cand_dr", _LIST, r"$\Delta R(cand, j)$"), Feature("cand_charge", _LIST, "constituent charge"),
    Feature("cand_class", _LIST, "constituent particle class"),
    Feature("cand_d0", _LIST, r"$d_{0}$", "cm"), Feature("cand_d0sig", _LIST, r"$d_{0}/\sigma_{d_0}$"),
    Feature("cand_dz", _LIST, r"$d_{z}$", "cm"), Feature("cand_dzsig", _LIST, r"$d_{z}/\sigma_{d_z}$"),
    Feature("cand_puppiw", _LIST, "PUPPI weight"),
    Feature("sv_pt", _LIST, r"$p_{T}^{SV}$", "GeV"), Feature("sv_mass", _LIST, r"$m^{SV}$", "GeV"),
    Feature("sv_ntracks", _LIST, r"$N_{tracks}^{SV}$"), Feature("sv_normchi2", _LIST, r"SV $\chi^2/ndof$"),
    Feature("sv_dxy", _LIST, r"SV $d_{xy}$", "cm"), Feature("sv_dxysig", _LIST, r"SV $d_{xy}/\sigma$"),
    Feature("sv_d3d", _LIST, r"SV $d_{3D}$", "cm"), Feature("sv_d3dsig", _LIST, r"SV $d_{3D}/\sigma$"),
    Feature("sv_costhetasvpv", _LIST, r"SV $\cos\theta_{SV,PV}$"),
    Feature("sv_dphi", _LIST, r"$\Delta\phi(SV, j)$", "rad"),
    Feature("sv_ptrel", _LIST, r"$p_{T}^{SV} / p_{T}^{j}$"), Feature("sv_erel", _LIST, r"$E^{SV} / E^{j}$"),
)
# Its training inputs by default: jet features every collection has (AK8 adds jet_msoftdrop, jet_tau21, ...).
JET_DEFAULT_FEATURES: tuple[str, ...] = ("jet_pt", "jet_eta", "jet_mass", "jet_area", "jet_ncand", "jet_nsv")

# A name both analyses write keeps the di-tau entry (its label; jdeta is |deta| there),
# unless the analysis is named: each analysis's own table first (`feature`).
_REGISTRY = {f.name: f for f in (*JET_COLUMNS, *MUTAU_COLUMNS, *DITAU_COLUMNS)}
ANALYSIS_COLUMNS: dict[str, dict[str, Feature]] = {
    "DiTauProcessor": {f.name: f for f in DITAU_COLUMNS},
    "MuTauProcessor": {f.name: f for f in MUTAU_COLUMNS},
    "JetProcessor": {f.name: f for f in JET_COLUMNS},
}
assert all(name in _REGISTRY for name in DEFAULT_FEATURES + MUTAU_DEFAULT_FEATURES + JET_DEFAULT_FEATURES)  # noqa: S101 - a typo here is a bug
# the truth is what a model is to predict, never what it is given
assert not {f.name for f in TRUTH_COLUMNS} & set(DEFAULT_FEATURES + MUTAU_DEFAULT_FEATURES + JET_DEFAULT_FEATURES)


def feature_differences(wanted: list[str], have: list[str], *, missing: str, extra: str) -> str | None:
    """How two feature lists differ as sets, for an error message, or None when they do not.

    ``missing`` and ``extra`` word the two sides: the names in ``wanted`` but not in
    ``have``, and those in ``have`` but not in ``wanted``.
    """
    if set(wanted) == set(have):
        return None
    parts = [f"{what}: {', '.join(names)}" for what, names in
             ((missing, [f for f in wanted if f not in have]), (extra, [f for f in have if f not in wanted]))
             if names]
    return "; ".join(parts)


def feature(name: str, analysis: str | None = None) -> Feature:
    """The registered feature ``name``, or one with its name as label and a unit from its suffix.

    ``analysis`` (the skim processor's name, as the prepared manifest records it) picks its
    own entry for a name two analyses write with different meanings (``jdeta``).
    """
    if name in ANALYSIS_COLUMNS.get(analysis or "", {}):
        return ANALYSIS_COLUMNS[analysis][name]
    if name in _REGISTRY:
        return _REGISTRY[name]
    unit = ""
    if name.endswith(("_pt", "_mass", "_sumet")) or name.startswith(("m_", "mt_", "pt_")):
        unit = "GeV"
    elif name.endswith("_phi"):
        unit = "rad"
    return Feature(name, "float32", name.replace("_", " "), unit)
