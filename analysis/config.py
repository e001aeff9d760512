"""Configuration (all stages): one typed, validated tree of settings with PHYSICS.md defaults.

Everything a physicist changes between analyses lives here: samples and cross sections,
luminosity, selection cuts, the feature list, split fractions, seeds, cluster settings.
Files are TOML; unknown keys, wrong types and impossible values are errors that name the
key (`ConfigError`). Stages receive a `Config` object and never read a global.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, ValidationError, field_validator, model_validator

from analysis.core.features import DEFAULT_FEATURES as _REGISTRY_DEFAULTS
from analysis.core.objects import ObjectsConfig, TaggerEvaluationConfig
from analysis.core.settings import (WeightProduct, deep_merge, first_non_finite, format_validation_error,
                                    given, parse_compression)
from analysis.core.tagger_config import TaggerConfig
from analysis.core.target import StrictModel, TargetConfig
from analysis.errors import ConfigError

__all__ = ["ClusterConfig", "Config", "ConfigError", "DEFAULT_FEATURES", "EvaluateConfig",
           "GenerateConfig", "MLPConfig", "PrepareConfig", "PrepareTableConfig", "Sample",
           "SelectionConfig", "SkimConfig", "TrainConfig", "XGBoostConfig", "config_to_toml",
           "default_config", "load_config", "with_overrides"]


_Strict = StrictModel  # unknown keys and non-finite numbers are errors (core.target)
_WHOLE_TABLES = ("samples", "classes")  # given, they replace the defaults as a whole


class Sample(_Strict):
    """One dataset of the fileset: a physics process with its cross section and class label."""

    process: str  # short process name written to the skim (`ggH`, `DY`, `data`)
    label: Literal[1, 0, -1]  # 1 signal, 0 background, -1 real data (never trained on)
    xsec_pb: float | None = None  # cross section in pb; None for real data
    real_events: int | None = None  # events in the real CMS dataset (sets generated sizes)
    data_lumi_pb: float | None = None  # integrated luminosity of a real-data dataset
    # The event weight's branches ("genWeight * puWeight"); None: [skim] weight, else genWeight.
    weight: WeightProduct = None
    weight_scale: float | None = Field(None, gt=0)  # a constant factor of the weight (k-factor...)

    @property
    def is_mc(self) -> bool:
        return self.label != -1

    @model_validator(mode="after")
    def _check(self) -> Sample:
        if self.label != -1:
            if self.xsec_pb is None:
                raise ValueError("xsec_pb: a simulated sample (label 0 or 1) needs a cross section")
            if not self.xsec_pb > 0 or not math.isfinite(self.xsec_pb):
                raise ValueError(f"xsec_pb: must be a finite number > 0, got {self.xsec_pb}")
        if self.real_events is not None and self.real_events <= 0:
            raise ValueError(f"real_events: must be > 0, got {self.real_events}")
        if self.data_lumi_pb is not None and self.data_lumi_pb <= 0:
            raise ValueError(f"data_lumi_pb: must be > 0, got {self.data_lumi_pb}")
        return self


def _default_samples() -> dict[str, Sample]:
    # PHYSICS.md "Samples": CMS 2012 open-data H->tautau outreach analysis, 8 TeV.
    return {
        "GluGluToHToTauTau": Sample(process="ggH", label=1, xsec_pb=19.6, real_events=476_963),
        "VBF_HToTauTau": Sample(process="VBF", label=1, xsec_pb=1.55, real_events=491_653),
        "DYJetsToLL": Sample(process="DY", label=0, xsec_pb=3503.7, real_events=30_458_871),
        "TTbar": Sample(process="TT", label=0, xsec_pb=225.2, real_events=6_423_106),
        "W1JetsToLNu": Sample(process="W1J", label=0, xsec_pb=6381.2, real_events=29_784_800),
        "W2JetsToLNu": Sample(process="W2J", label=0, xsec_pb=2039.8, real_events=30_693_853),
        "W3JetsToLNu": Sample(process="W3J", label=0, xsec_pb=612.5, real_events=15_241_144),
        "Run2012B_TauPlusX": Sample(process="data", label=-1, data_lumi_pb=4412.0),
        "Run2012C_TauPlusX": Sample(process="data", label=-1, data_lumi_pb=7055.0),
    }


# Tau working points are names, resolved per input profile (outreach booleans, DeepTau bits).
TauWorkingPoint = Literal["VLoose", "Loose", "Medium", "Tight"]


class SelectionConfig(_Strict):
    """Object and event selection of PHYSICS.md "Selection (default)"."""

    tau_pt_min: float = 20.0  # GeV
    tau_abs_eta_max: float = 2.3
    tau_require_decay_mode: bool = True  # decay-mode finding passed
    tau_iso: TauWorkingPoint = "Medium"  # isolation (outreach) / DeepTau vs-jet working point
    tau_anti_ele: TauWorkingPoint = "Loose"  # anti-electron discriminator
    tau_anti_mu: TauWorkingPoint = "Loose"  # anti-muon discriminator
    tau_require_anti_lepton: bool = True  # apply tau_anti_ele / tau_anti_mu (off: keep lepton fakes)
    tau_pair_dr_min: float = 0.5  # minimal Delta R between the two taus of the pair
    jet_pt_min: float = 30.0  # GeV
    jet_abs_eta_max: float = 4.7
    jet_require_puid: bool = True  # pile-up jet ID passed
    jet_tau_dr_min: float = 0.5  # jets closer than this to either selected tau are dropped
    min_jets: int = Field(2, ge=0)  # events need at least this many good jets
    triggers: list[str] = []  # HLT paths, OR-ed; empty = no trigger requirement
    triggers_on_mc: bool = False  # apply `triggers` to simulation too (off by default)

    @model_validator(mode="after")
    def _check(self) -> SelectionConfig:
        for key in ("tau_pt_min", "tau_abs_eta_max", "jet_pt_min", "jet_abs_eta_max",
                    "tau_pair_dr_min", "jet_tau_dr_min"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        return self


# Training inputs by default (chosen, with their reasons, in the feature registry).
DEFAULT_FEATURES: list[str] = list(_REGISTRY_DEFAULTS)


class GenerateConfig(_Strict):
    """The synthetic sample of `hepprep generate` (the embedded default of `make demo`)."""

    events: int = Field(300_000, gt=0)  # total simulated events over all MC datasets
    files_per_sample: int = Field(2, gt=0)
    seed: int = 2012
    compression: str = "LZ4:1"  # ALG:LEVEL with ALG one of ZLIB, LZ4, ZSTD, LZMA
    data_scale: float = Field(1.0, gt=0)  # pseudo-data events = expected yield x data_scale

    @field_validator("compression")
    @classmethod
    def _check_compression(cls, value: str) -> str:
        parse_compression(value)
        return value


class SkimConfig(_Strict):
    """The skim stage (coffea processor over the fileset)."""

    # auto: in this process for a small skim (one worker, one chunk, or fewer events than
    # parallel_min_events), else `workers` processes (futures); see analysis/skim/pool.py.
    executor: Literal["auto", "iterative", "futures", "dask", "dask-awkward"] = "auto"
    workers: int = Field(2, gt=0)  # processes for the futures executor / local dask cluster
    # auto: fewest events for worker processes (2 workers, 1M events: 1.0-1.1x the in-process time)
    parallel_min_events: int = Field(2_000_000, ge=0)
    chunksize: int = Field(100_000, gt=0)  # events per chunk (one Parquet part per chunk)
    skip_bad_files: bool = False  # record unreadable files in the manifest and go on
    # Remote inputs (root://, https://): a read failing on the network (refused, reset, timed
    # out) is tried again; a missing file is not. See analysis/remote.py.
    retries: int = Field(3, ge=0)  # further tries of a remote file or chunk after such a failure
    retry_wait: float = Field(2.0, ge=0)  # seconds between tries (a restarting server can come back)
    timeout: int = Field(60, gt=0)  # seconds a remote request may take before it counts as failed (XRootD takes whole seconds)
    # The analysis: a processors.SkimProcessor as package.module:Class or path/to/file.py:Class.
    processor: str = "processors.ditau:DiTauProcessor"
    options: dict[str, Any] = {}  # the processor's options, validated by its Options model
    # The MC weight's branches of a dataset naming none ("genWeight * puWeight"; README "Event
    # weights"); None: genWeight where the files have it.
    weight: WeightProduct = None
    input_profiles: dict[str, dict[str, Any]] = {}  # NanoAOD dialects added or changed (processors.profiles)


class PrepareTableConfig(_Strict):
    """Prepare on a flat table (Parquet or CSV) instead of a skim; defaults read the HiggsML CSV."""

    format: Literal["csv", "parquet"] = "csv"
    label_column: str = "Label"  # class column; its values are mapped with the two lists below
    signal_values: list[str] = ["s", "1"]  # label values (compared as text) meaning signal
    background_values: list[str] = ["b", "0"]  # label values meaning background
    data_values: list[str] = ["-1"]  # label values meaning real data (never trained on)
    weight_column: str | None = "Weight"  # physics weight; None: every row weighs 1
    id_columns: list[str] = ["EventId"]  # event identity for the hash split; [] = file + row number
    feature_columns: list[str] = []  # [] = every numeric column except label, weight and ids
    missing_value: float | None = -999.0  # sentinel for "undefined" (HiggsML), read as NaN
    chunk_rows: int = Field(500_000, gt=0)  # rows converted at a time (memory bound of the reader)


class PrepareConfig(_Strict):
    """The prepare stage (split, weights, statistics, standardisation, shuffle)."""

    split: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test fractions
    seed: int = 1234
    kfolds: int = Field(0, ge=0)  # >= 2 adds a `fold` column for cross-validation
    negative_weights: Literal["keep", "abs", "zero"] = "keep"
    # Prepare a skim that is not complete (input files not done, datasets without parts),
    # recorded in the prepared manifest; off: such a skim is refused.
    allow_incomplete: bool = False
    bucket_rows: int = Field(1_000_000, gt=0)  # rows per shuffle bucket (sets peak memory)
    file_rows: int = Field(1_000_000, gt=0)  # rows per output Parquet file
    row_group_rows: int = Field(100_000, gt=0)  # rows per row group inside a file
    table: PrepareTableConfig = PrepareTableConfig()  # column names of a flat-table input
    objects: ObjectsConfig = ObjectsConfig()  # list columns and the flat (pt, eta) weights (core.objects)

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in value):
            raise ValueError(f"fractions must be >= 0, got {value}")
        if value[0] <= 0:
            raise ValueError(f"the train fraction must be > 0, got {value}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {value} (sum {sum(value):g})")
        return value


class XGBoostConfig(_Strict):
    """Gradient-boosted trees (xgboost.dask).

    The defaults are regularised for samples of tens of thousands of events: with
    class-balanced train_weight each signal event weighs several times a background one,
    and deep trees with small leaves memorise it (train-vs-test KS p-value of the signal
    scores ~1e-24 at depth 6, ~1e-3 at these settings, same AUC within 0.003).
    """

    max_depth: int = Field(3, gt=0)
    eta: float = Field(0.1, gt=0)
    num_boost_round: int = Field(500, gt=0)
    early_stopping_rounds: int = Field(20, gt=0)
    subsample: float = Field(0.8, gt=0, le=1)  # row fraction per tree
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    min_child_weight: float = Field(50.0, ge=0)  # in units of the hessian x train_weight
    tree_method: Literal["hist", "approx"] = "hist"
    seed: int = 7
    # xgboost needs train_weight >= 0; signed NLO weights (prepare.negative_weights = "keep")
    # are trained on as |w| ("abs") or dropped ("zero"), or stop the run ("error").
    negative_weights: Literal["abs", "zero", "error"] = "abs"


class MLPConfig(_Strict):
    """Fully connected network (PyTorch)."""

    hidden: list[PositiveInt] = Field([64, 128, 64], min_length=1)  # widths of the hidden layers
    dropout: float = Field(0.0, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(1024, gt=0)
    max_epochs: int = Field(30, gt=0)
    patience: int = Field(5, gt=0)  # epochs without validation improvement before stopping
    lr_decay_factor: float = Field(0.5, gt=0, lt=1)  # lr multiplier when val loss stalls
    lr_decay_patience: int = Field(2, ge=0)  # stalled epochs before the lr is lowered
    shuffle_buffer: int = Field(100_000, gt=0)  # rows held by the streaming loader's buffer
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    # Without workers: threads reading and shuffling, each with a share of the row groups
    # and of the buffer (more help a GPU wait less; the row order depends on the number).
    read_threads: int = Field(2, gt=0)
    cpu_threads: int = Field(1, ge=0)  # torch intra-op threads; 0 = torch's default (all cores)
    seed: int = 7


class TrainConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    xgboost: XGBoostConfig = XGBoostConfig()
    mlp: MLPConfig = MLPConfig()
    tagger: TaggerConfig = TaggerConfig()  # pfn, part, cnn (analysis/core/tagger_config.py)


class ClusterConfig(_Strict):
    """Where dask stages run: a LocalCluster, an existing scheduler, or a batch system."""

    kind: Literal["local", "address", "slurm", "htcondor"] = "local"
    address: str | None = None  # scheduler address for kind = "address" (tcp://host:8786)
    n_workers: int = Field(2, gt=0)  # local workers, or batch jobs to scale to
    threads_per_worker: int = Field(1, gt=0)
    memory_limit: str = "4GiB"  # per worker
    # Where a local cluster's dashboard listens: this machine only by default (on a shared
    # machine anyone could watch, or stop, the tasks); ":0" listens on every interface.
    dashboard_address: str = "127.0.0.1:0"
    jobqueue: dict[str, Any] = {}  # extra keyword arguments for dask-jobqueue's cluster class

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.kind == "address" and not self.address:
            raise ValueError("address: kind = 'address' needs the scheduler address")
        return self


class EvaluateConfig(_Strict):
    """The evaluation stage (metrics, plots, report)."""

    b_reg: float = Field(10.0, gt=0)  # AMS background regularisation (HiggsML, PHYSICS.md)
    background_efficiencies: list[float] = [0.01, 0.1]  # working points for the signal efficiency
    n_cuts: int = Field(200, ge=2)  # score cuts of the AMS scan, evenly spaced in [0, 1)
    n_bins: int = Field(40, ge=5)  # bins of the input-feature histograms
    shap_rows: int = Field(5000, gt=0)  # test events used for the mean |SHAP| importance
    dpi: int = Field(90, ge=30, le=300)  # resolution of plots/*.png
    tagger: TaggerEvaluationConfig = TaggerEvaluationConfig()  # a jet folder's classes, working points, pt bins

    @field_validator("background_efficiencies")
    @classmethod
    def _check_effs(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < e < 1 for e in value):
            raise ValueError(f"must be a non-empty list of fractions in (0, 1), got {value}")
        return value


class Config(_Strict):
    """The whole configuration. `default_config()` is PHYSICS.md's default analysis."""

    lumi_pb: float = 11_467.0  # integrated luminosity of Run2012B+C in pb^-1
    samples: dict[str, Sample] = Field(default_factory=_default_samples)
    selection: SelectionConfig = SelectionConfig()
    # Training inputs; None: the processor's declared default features (the di-tau
    # processor's are DEFAULT_FEATURES).
    features: list[str] | None = None
    generate: GenerateConfig = GenerateConfig()
    skim: SkimConfig = SkimConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    target: TargetConfig = TargetConfig()  # what the models learn (DESIGN.md "Targets")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.lumi_pb > 0:
            raise ValueError(f"lumi_pb: must be > 0, got {self.lumi_pb}")
        if self.features is not None:
            if not self.features:
                raise ValueError("features: the feature list is empty (leave it out for the processor's own)")
            dupes = sorted({f for f in self.features if self.features.count(f) > 1})
            if dupes:
                raise ValueError(f"features: listed twice: {', '.join(dupes)}")
        labels = {s.label for s in self.samples.values()}
        if self.samples and not {0, 1} <= labels:
            raise ValueError("samples: need at least one signal (label 1) and one background (label 0)")
        self.target.check_processes({s.process for s in self.samples.values() if s.label >= 0})
        return self


def default_config() -> Config:
    """The embedded default analysis (PHYSICS.md)."""
    return Config()


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a (partial) configuration mapping over the defaults.

    Sections are merged key by key with the defaults; a `[samples]` table, when given,
    replaces the default sample list as a whole (an analysis names all of its samples).
    Non-finite numbers are refused everywhere, free-form tables (``cluster.jobqueue``)
    included.
    """
    bad = first_non_finite(data)
    if bad is not None:
        raise ConfigError(f"{source}: {bad}: must be a finite number (NaN and inf are not allowed)")
    try:
        merged = deep_merge(default_config().model_dump(), data, replace=_WHOLE_TABLES)
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


def with_overrides(config: Config, overrides: dict[str, Any], *, source: str) -> Config:
    """``config`` with ``overrides`` folded in and the result validated like a config file.

    The one way flags and keyword arguments change a configuration: ``overrides`` is a
    nested mapping (``{"skim": {"chunksize": 50000}}``) in which None means "not given"
    (so 0 stays 0, never the default); ``source`` names them in an error
    (``--chunksize``, ``run_skim arguments``). Without anything given, ``config`` itself.
    """
    changes = given(overrides)
    if not changes:
        return config
    return config_from_dict(deep_merge(config.model_dump(), changes, replace=_WHOLE_TABLES), source=source)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML configuration file over the defaults, then apply command-line overrides.

    Parameters
    ----------
    path : str or Path or None
        TOML file; None gives the embedded default.
    overrides : dict or None
        Nested mapping (`{"skim": {"chunksize": 50000}}`) applied after the file.

    Raises
    ------
    ConfigError
        One line naming the file and key: ``analysis.toml: skim.chunksize: unknown key``.
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
    if overrides:
        data = deep_merge(data, given(overrides), replace=_WHOLE_TABLES)
    return config_from_dict(data, source=source)


def config_to_toml(config: Config) -> str:
    """The effective configuration as TOML (what `hepprep config show` prints)."""
    import tomli_w
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
