"""Training stage (taggers): ``hepprep train PREPDIR --model pfn | part | cnn`` on a jet-level prepared folder.

The jets stream through the padding loader (`analysis.train.jet_stream`) with the layout
chosen here from the prepared stats.json and ``[train.tagger]``: N constituents of the
``cand_*`` lists (every one prepare standardised, unless ``constituent_features`` says),
the jet's flat features, or images for the CNN. The network is `analysis.train.taggers`,
the loop the MLP's (`analysis.train.fit`): weighted losses of the target kind, AdamW,
ReduceLROnPlateau, early stopping on the validation loss, a checkpoint each epoch and
``--resume``, fixed seeds, float16 autocast on CUDA when ``mixed_precision``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pyarrow.parquet as pq

from analysis.config import Config
from analysis.core.jet_tables import ROTATE_COLUMNS
from analysis.core.optional import optional_import
from analysis.core.progress import stage_console
from analysis.core.tagger_config import TAGGER_MODELS
from analysis.errors import ConfigError, StageInputError
from analysis.train.fit import FitRun, fit, fit_info, run_key
from analysis.train.inputs import PreparedSplits
from analysis.train.jet_stream import JetRowLayout

__all__ = ["layout_record", "tagger_layout", "tagger_run_key", "train_tagger"]

_VAL_BATCH = 1024  # validation batch: no gradients, but a padded jet is N x F floats
# Settings that may change between a run and its resumption (they do not alter the past).
_RESUMABLE_CHANGES = ("max_epochs", "patience", "num_workers", "cpu_threads", "read_threads")
_SECTION = "train.tagger"


def _constituent_lists(prepared: PreparedSplits, model: str) -> list[str]:
    """The ``cand_*`` columns prepare standardised, in stats.json order; none: not a jet-level folder."""
    record = prepared.stats.get("constituents") or {}
    names = [c for c in record.get("feature_order", []) if c.startswith("cand_")]
    if not names:
        raise StageInputError(f"{prepared.root / 'stats.json'}: no constituent lists (cand_*): --model {model} "
                              "trains on the constituents of a jet-level prepared folder (README \"Preparing "
                              "jets\": [prepare.objects] constituent_features)")
    return names


def tagger_layout(model: str, prepared: PreparedSplits, config: Config) -> JetRowLayout:
    """What a jet's row holds for ``model``: N, the constituent features or the image channels, jet features.

    Raises
    ------
    StageInputError
        An event-level folder (no ``cand_*`` lists), or one without a column the model needs.
    ConfigError
        ``[train.tagger]`` names a column the folder lacks, or leaves out one the model needs.
    """
    cfg = config.train.tagger
    stats_path = prepared.root / "stats.json"
    lists = _constituent_lists(prepared, model)
    jets = tuple(prepared.features) if cfg.jet_features else ()
    if model == "cnn":
        for name in ("cand_deta", "cand_dphi"):
            if name not in lists:
                raise StageInputError(f"{stats_path}: no {name} list: --model cnn makes its images from "
                                      "cand_deta and cand_dphi (add them to prepare.objects.constituent_features)")
        if cfg.image_channels != ["all"] and "cand_class" not in lists:
            raise ConfigError(f"train.tagger.image_channels: {', '.join(cfg.image_channels)} need the "
                              f"cand_class list, which {stats_path} does not have; use [\"all\"]")
        if cfg.rotate_images:
            present = set(pq.read_schema(prepared.split("train").files[0]).names)
            missing = [c for c in ROTATE_COLUMNS if c not in present]
            if missing:
                raise ConfigError(f"train.tagger.rotate_images: the prepared files have no {', '.join(missing)} "
                                  "(AK8 jets' leading subjet) to rotate to; set it to false")
        return JetRowLayout(0, (), jets, channels=tuple(cfg.image_channels))
    features = list(cfg.constituent_features or lists)
    unknown = [f for f in features if f not in lists]
    if unknown:
        raise ConfigError(f"train.tagger.constituent_features: {', '.join(unknown)} not among the constituent "
                          f"lists of {stats_path} ({', '.join(lists)})")
    if model == "part":
        from analysis.train.taggers import pair_kinematics

        try:
            pair_kinematics(features)
        except ValueError as err:
            try:
                pair_kinematics(lists)
            except ValueError:
                raise StageInputError(f"{stats_path}: --model part computes its pairwise features from the "
                                      f"constituents' direction and pt: {err} (add them to "
                                      "prepare.objects.constituent_features)") from None
            raise ConfigError(f"train.tagger.constituent_features: --model part computes its pairwise "
                              f"features from the constituents' direction and pt: {err}") from None
    return JetRowLayout(cfg.constituents, tuple(features), jets)


def layout_record(layout: JetRowLayout) -> dict:
    """The layout as model_info.json keeps it (`analysis.train.predict` rebuilds it)."""
    return {"constituents": layout.n_constituents, "constituent_features": list(layout.constituent_features),
            "jet_features": list(layout.jet_features), "image_channels": list(layout.channels)}


def _params(config: Config, model: str) -> dict:
    """``[train.tagger]`` without the other models' sections, the model's own as ``network``."""
    params = config.train.tagger.model_dump()
    network = params[model]
    for name in TAGGER_MODELS:
        params.pop(name)
    return {**params, "network": network}


def tagger_run_key(config: Config, model: str, prepared: PreparedSplits, layout: JetRowLayout | None = None) -> dict:
    """What a tagger checkpoint must match to be resumed (`analysis.train.fit.run_key`)."""
    layout = layout or tagger_layout(model, prepared, config)
    params = {**_params(config, model), "model": model}
    return run_key(params, _RESUMABLE_CHANGES, [*layout.constituent_features, *layout.channels,
                                                 *layout.jet_features], prepared, config.target)


def train_tagger(model: str, prepared: PreparedSplits, out: Path, config: Config, *, device: str,
                 resume: bool = False, progress: bool = True) -> dict:
    """Train ``model`` (pfn, part, cnn), checkpointing each epoch; write ``out/model.pt``.

    Returns
    -------
    dict
        ``{"info": {...}, "history": {...}}`` as `analysis.train.mlp.train_mlp`; info also holds
        the ``layout`` and ``n_parameters``.
    """
    torch = optional_import("torch", purpose=f"the {model} tagger")
    threads = torch.get_num_threads()
    if config.train.tagger.cpu_threads:
        torch.set_num_threads(config.train.tagger.cpu_threads)
    try:
        return _train(torch, model, prepared, out, config, device=device, resume=resume, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(torch, model: str, prepared: PreparedSplits, out: Path, config: Config, *, device: str,
           resume: bool, progress: bool) -> dict:
    from analysis.train.jet_stream import JetBatchStream
    from analysis.train.stream import BatchLoader
    from analysis.train.taggers import build_tagger, trim_padding

    cfg = config.train.tagger
    console = stage_console(quiet=not progress)
    target = prepared.target
    layout = tagger_layout(model, prepared, config)
    train, val = prepared.split("train"), prepared.split("val")
    amp = device == "cuda" and cfg.mixed_precision
    torch.manual_seed(cfg.seed)
    streams = {"stats": prepared.stats, "rotate_images": cfg.rotate_images, "targets": target.columns}
    train_stream = JetBatchStream(train.files, layout, batch_size=cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                                  seed=cfg.seed, as_numpy=True, read_threads=cfg.read_threads, **streams)
    val_stream = JetBatchStream(val.files, layout, batch_size=_VAL_BATCH, shuffle_buffer=_VAL_BATCH,
                                shuffle=False, **streams)
    net_params = getattr(cfg, model).model_dump()
    try:
        net = build_tagger(model, layout, net_params, target.n_outputs, prepared.stats.get("constituents"))
    except ValueError as err:  # tagger_layout has checked the columns: a bug, not a user error
        raise RuntimeError(f"{model}: {err}") from err
    net = net.to(device)

    def forward(network, x):
        # On a GPU the padded slots cost less than a host sync per batch to find the longest jet.
        return network(**(layout.unpack(x) if x.is_cuda else trim_padding(layout.unpack(x))))

    run = FitRun(name=model, section=_SECTION, net=net, settings=cfg, train_stream=train_stream,
                 train_loader=BatchLoader(train_stream, num_workers=cfg.num_workers), val_stream=val_stream,
                 forward=forward, n_features=layout.width, key=tagger_run_key(config, model, prepared, layout),
                 device=device, amp=amp)
    n_parameters = sum(p.numel() for p in net.parameters())
    shape = (f"{len(layout.channels)}x40x40 images" if layout.images else
             f"N={layout.n_constituents} x {len(layout.constituent_features)} features")
    console.print(f"train {model} ({n_parameters} parameters) on {device}{' (mixed precision)' if amp else ''}: "
                  f"{shape}, {len(layout.jet_features)} jet features; {train.rows} train jets in "
                  f"{train.row_groups} row groups, buffer {cfg.shuffle_buffer} jets")
    begin = time.perf_counter()
    result = fit(torch, run, prepared, out, config.target, resume=resume, console=console, progress=progress)
    shared = fit_info(torch, run, result, prepared, seconds=time.perf_counter() - begin, console=console)
    info = {key: shared.pop(key) for key in ("model", "device", "mixed_precision")}
    info |= {"params": copy.deepcopy(_params(config, model)), "layout": layout_record(layout),
             "n_outputs": target.n_outputs, "n_parameters": n_parameters, **shared}
    return {"info": info, "history": result["history"]}
