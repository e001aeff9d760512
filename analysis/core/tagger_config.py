"""Core (configuration, train): ``[train.tagger]``, the settings of the constituent taggers and their loader.

The taggers (``hepprep train --model pfn | part | cnn``) read a jet-level prepared folder
(README "Jet-level datasets") through the padding loader (`analysis.train.jet_stream`):
each jet's first ``constituents`` entries of its ``cand_*`` lists (by decreasing pt), a mask,
and optionally the jet's flat features; the CNN reads images made from the lists by
`analysis.core.jet_images`. N is chosen here, at training time: the prepared files keep
every constituent. Declared here rather than in `analysis.config` (which references it as
``TrainConfig.tagger``) to keep that module readable.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from analysis.core.jet_images import DEFAULT_CHANNELS
from analysis.core.target import StrictModel

__all__ = ["TAGGER_MODELS", "CNNConfig", "PFNConfig", "ParTConfig", "TaggerConfig"]

TAGGER_MODELS = ("pfn", "part", "cnn")  # `hepprep train --model`, each with its section of [train.tagger]


class PFNConfig(StrictModel):
    """``[train.tagger.pfn]``: Particle Flow Network (Komiske, Metodiev, Thaler 2019), small by default.

    The paper's Phi is (100, 100, 128) and F (100, 100, 100); half that trains on a CPU in
    minutes and loses little on a few 10^5 jets.
    """

    phi: list[int] = Field([64, 64, 64], min_length=1)  # widths of the per-particle network; the last is the latent sum
    f: list[int] = Field([64, 64], min_length=1)  # widths of the network over the sum (and the jet features)
    dropout: float = Field(0.0, ge=0, lt=1)  # after each hidden layer of F

    @field_validator("phi", "f")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        return _positive_widths(value)


class ParTConfig(StrictModel):
    """``[train.tagger.part]``: a small Particle Transformer (Qu, Li, Qian 2022).

    The paper's is 128 wide, 8 heads, 8 particle and 2 class-attention blocks (2.1M
    parameters); these defaults have 28k (5 constituent features, 3 jet features, 3 classes).
    The pairwise features cost N^2 per jet: on a busy 2-core CPU they train at about 70
    jets/s with N = 100 (an epoch of 10^4 jets in 2.4 minutes) and 570 jets/s with
    ``constituents = 32`` (benchmarks/bench_taggers.py: 8 epochs of 36k generated AK8 jets
    in 8.4 minutes, above xgboost on the jet features); on a GPU N = 100 is cheap.
    """

    embed_dim: int = Field(32, gt=0)  # the particle embedding; a multiple of heads
    heads: int = Field(4, gt=0)
    blocks: int = Field(2, gt=0)  # particle self-attention blocks, each biased by the pairwise features
    class_blocks: int = Field(1, gt=0)  # class-token attention blocks
    ffn_ratio: int = Field(2, gt=0)  # feed-forward width = ffn_ratio x embed_dim
    pair_embed: list[int] = Field([16], min_length=1)  # hidden widths of the pairwise embedding; it ends in one bias per head
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("pair_embed")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        return _positive_widths(value)

    @model_validator(mode="after")
    def _heads_divide(self) -> ParTConfig:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of heads {self.heads}")
        return self


class CNNConfig(StrictModel):
    """``[train.tagger.cnn]``: a CNN on the C x 40 x 40 jet images (3x3 convolutions, 2x2 max pooling)."""

    channels: list[int] = Field([16, 32, 32], min_length=1, max_length=5)  # one conv block each; 40 px halves per block
    dense: list[int] = Field([64], min_length=1)  # widths of the head over the flattened maps (and the jet features)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("channels", "dense")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        return _positive_widths(value)


def _positive_widths(value: list[int]) -> list[int]:
    if any(v <= 0 for v in value):
        raise ValueError(f"layer widths must be positive, got {value}")
    return value


class TaggerConfig(StrictModel):
    """``[train.tagger]``: what the constituent taggers see, and how they are trained."""

    constituents: int = Field(100, gt=0)  # N: each jet's first N constituents (by pt), padded, with a mask
    # The per-constituent inputs, in order: list columns of the prepared folder (all of the
    # same lengths, i.e. cand_*). None: every cand_* column prepare standardised
    # ([prepare.objects] constituent_features), in stats.json order.
    constituent_features: list[str] | None = None
    jet_features: bool = True  # also feed the jet's standardised flat features (stats.json feature_order)
    image_channels: list[str] = ["all"]  # cnn: channels of DEFAULT_CHANNELS (all, photon, charged_hadron, ...)
    rotate_images: bool = False  # cnn: rotate each jet so its leading subjet points up (jet_sj1_deta/dphi)
    batch_size: int = Field(256, gt=0)
    shuffle_buffer: int = Field(20_000, gt=0)  # jets held by the loader's buffer (a padded jet is ~N x F floats)
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes
    read_threads: int = Field(2, gt=0)  # without workers: threads reading, padding and shuffling
    lr: float = Field(1e-3, gt=0)  # AdamW
    weight_decay: float = Field(1e-2, ge=0)
    max_epochs: int = Field(20, gt=0)
    patience: int = Field(4, gt=0)  # epochs without validation improvement before stopping
    lr_decay_factor: float = Field(0.5, gt=0, lt=1)  # lr multiplier when the validation loss stalls
    lr_decay_patience: int = Field(1, ge=0)
    cpu_threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = torch's default (all cores)
    mixed_precision: bool = True  # bfloat16/float16 autocast on CUDA (never on CPU)
    seed: int = 11
    pfn: PFNConfig = PFNConfig()
    part: ParTConfig = ParTConfig()
    cnn: CNNConfig = CNNConfig()

    @field_validator("constituent_features")
    @classmethod
    def _check_features(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("name at least one list column, or leave it out for every cand_* column")
            twice = sorted({f for f in value if value.count(f) > 1})
            if twice:
                raise ValueError(f"listed twice: {', '.join(twice)}")
        return value

    @field_validator("image_channels")
    @classmethod
    def _check_channels(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in DEFAULT_CHANNELS]
        if not value or unknown:
            raise ValueError(f"unknown image channel(s) {unknown or value}; use some of {', '.join(DEFAULT_CHANNELS)}")
        return value
