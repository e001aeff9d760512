"""Training stage (taggers): the constituent networks, built the same way for training and prediction.

- `ParticleFlowNetwork` (Komiske, Metodiev, Thaler 2019): a per-particle network Phi, the
  sum of its outputs over the real constituents, a network F over the sum (and the jet's
  flat features).
- `ParticleTransformer` (Qu, Li, Qian 2022), small: particle embedding, self-attention
  blocks whose scores are biased per head by an embedding of the pairwise features
  ln kT, ln z, ln dR, ln m^2, then class-token attention blocks and a head.
- `JetImageCNN`: 3x3 convolutions and 2x2 max pooling on the C x 40 x 40 images, a dense head.

Each takes what `analysis.train.jet_stream.JetRowLayout.unpack` gives — ``(constituents,
mask, jets)`` or ``(images, jets)`` — and returns ``(B, n_outputs)`` like the MLP: one logit,
one logit per class, or the standardised regressed values. Missing inputs (NaN) are imputed
inside ``forward`` (`analysis.train.networks.impute_missing`), so an exported graph treats
them alike; padding is the mask's business only: a padded slot changes no output, and a jet
with one constituent or none still gives finite outputs. Everything is plain tensor
arithmetic without data-dependent Python branches, so ``torch.onnx`` can export the graphs
with the mask as an input. A model directory rebuilds a network from model_info.json with
`build_tagger` and loads its state dict: no pickled class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.core.optional import optional_import
from analysis.core.standardise import Standardisation
from analysis.core.tagger_config import TAGGER_MODELS
from analysis.train.networks import impute_missing

torch = optional_import("torch", purpose="the taggers (pfn, part, cnn)")
nn = torch.nn

__all__ = ["JetImageCNN", "ParticleFlowNetwork", "ParticleTransformer", "build_tagger",
           "pair_kinematics", "trim_padding"]

# ParT's pairwise features need each constituent's direction relative to the jet axis and its
# pt; the pair mass is taken massless, m^2 = 2 pt_i pt_j (cosh deta - cos dphi), exact for PF
# candidates up to their masses (pions: 0.14 GeV), so no energy column is needed.
PAIR_DIRECTION = ("cand_deta", "cand_dphi")
PAIR_PT = ("cand_logpt", "cand_pt")  # the first present; logpt is exponentiated
_EPS = 1e-8  # floor of the logarithms' arguments (coincident constituents, pt 0)
# Score of a padded key: exp(-1e9 - max) is exactly 0 in float32 next to any real key, and a
# row of padding only still has a finite (uniform) soft-max, where -inf would give NaN.
_MASKED = -1e9


def pair_kinematics(features: Sequence[str]) -> tuple[str, str, str]:
    """(deta, dphi, pt) columns ParT computes its pairwise features from.

    Raises
    ------
    ValueError
        Naming the missing columns (the caller says where they were looked for).
    """
    missing = [name for name in PAIR_DIRECTION if name not in features]
    pt = next((name for name in PAIR_PT if name in features), None)
    if pt is None:
        missing.append(" or ".join(PAIR_PT))
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return PAIR_DIRECTION[0], PAIR_DIRECTION[1], pt


def trim_padding(inputs: dict) -> dict:
    """The inputs with the constituent slots no jet of the batch uses cut off (at least one kept).

    The loader fills each jet's first slots and pads the rest, and padding changes no output,
    so this only saves work: ParT's pairwise features cost N^2 per jet. Eager code only (it
    reads the batch's longest jet); an exported graph takes any N.
    """
    if "mask" not in inputs:
        return inputs
    longest = max(1, int(inputs["mask"].sum(dim=1).max()))
    return {**inputs, "constituents": inputs["constituents"][:, :longest], "mask": inputs["mask"][:, :longest]}


def _dense(width: int, sizes: Sequence[int], *, dropout: float = 0.0, activation=nn.ReLU) -> tuple[list, int]:
    """Linear-activation(-dropout) layers of the given widths, and the last width."""
    layers: list = []
    for size in sizes:
        layers += [nn.Linear(width, size), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    return layers, width


class ParticleFlowNetwork(nn.Module):
    """Phi per particle, a masked sum, F over the sum (and the jet features); see the module docstring."""

    def __init__(self, n_features: int, n_jet_features: int, *, phi: Sequence[int], f: Sequence[int],
                 dropout: float = 0.0, n_outputs: int = 1):
        super().__init__()
        self.n_jet_features = n_jet_features
        layers, latent = _dense(n_features, phi)
        self.phi = nn.Sequential(*layers)
        layers, width = _dense(latent + n_jet_features, f, dropout=dropout)
        self.f = nn.Sequential(*layers, nn.Linear(width, n_outputs))

    def forward(self, constituents, mask, jets):
        latent = self.phi(impute_missing(constituents)) * mask.unsqueeze(-1).to(constituents.dtype)
        summed = latent.sum(dim=1)
        if self.n_jet_features:
            summed = torch.cat([summed, impute_missing(jets)], dim=1)
        return self.f(summed)


class _Attention(nn.Module):
    """Multi-head attention of queries over keys, with an additive score bias and a key mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries, keys, key_mask, bias=None):
        batch, n_query, dim = queries.shape
        n_key = keys.shape[1]
        head = dim // self.heads
        q = self.query(queries).reshape(batch, n_query, self.heads, head).transpose(1, 2)
        kv = self.key_value(keys).reshape(batch, n_key, 2, self.heads, head).permute(2, 0, 3, 1, 4)
        # In float32 also under autocast: the bias and the masked value are out of float16's range.
        scores = torch.matmul(q, kv[0].transpose(-1, -2)).float() * (1.0 / math.sqrt(head))
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~key_mask[:, None, None, :], _MASKED)
        weights = torch.softmax(scores, dim=-1).to(kv.dtype)
        return self.out(torch.matmul(weights, kv[1]).transpose(1, 2).reshape(batch, n_query, dim))


class _Block(nn.Module):
    """Pre-norm attention + feed-forward; a class block updates only its first (class) token."""

    def __init__(self, dim: int, heads: int, ffn_ratio: int, dropout: float):
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_ratio * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_mask, bias=None, *, class_token: bool = False):
        h = self.norm_attention(x)
        queries = h[:, :1] if class_token else h
        x = (x[:, :1] if class_token else x) + self.dropout(self.attention(queries, h, key_mask, bias))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class ParticleTransformer(nn.Module):
    """Particle attention biased by pairwise features, class-token attention, a head.

    Parameters
    ----------
    n_features, n_jet_features : F per constituent, J flat jet features (0: none)
    kinematics : indices of (deta, dphi, pt) among the F features, and whether the pt column is log pt
    scale, shift : their standardisation undone, ``raw = x * scale + shift`` (buffers: the graph
        computes the pairwise features in physical units from its standardised inputs)
    embed_dim, heads, blocks, class_blocks, ffn_ratio, pair_embed, dropout : `ParTConfig`
    """

    def __init__(self, n_features: int, n_jet_features: int, *, kinematics: tuple[int, int, int],
                 log_pt: bool, scale: Sequence[float], shift: Sequence[float], embed_dim: int, heads: int,
                 blocks: int, class_blocks: int, ffn_ratio: int, pair_embed: Sequence[int],
                 dropout: float = 0.0, n_outputs: int = 1):
        super().__init__()
        self.n_jet_features = n_jet_features
        self.log_pt = log_pt
        self.register_buffer("kinematics", torch.tensor(kinematics, dtype=torch.long))
        self.register_buffer("kinematic_scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("kinematic_shift", torch.tensor(shift, dtype=torch.float32))
        self.embed = nn.Sequential(nn.Linear(n_features, embed_dim), nn.GELU(),
                                   nn.Linear(embed_dim, embed_dim))
        layers, width = _dense(4, pair_embed, activation=nn.GELU)
        self.pair_embed = nn.Sequential(*layers, nn.Linear(width, heads))
        self.blocks = nn.ModuleList(_Block(embed_dim, heads, ffn_ratio, dropout) for _ in range(blocks))
        self.class_blocks = nn.ModuleList(_Block(embed_dim, heads, ffn_ratio, dropout) for _ in range(class_blocks))
        self.class_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.class_token, std=0.02)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Sequential(nn.Linear(embed_dim + n_jet_features, embed_dim), nn.ReLU(),
                                  nn.Linear(embed_dim, n_outputs))

    def pair_features(self, constituents, mask):
        """(B, N, N, 4): ln kT, ln z, ln dR, ln m^2 of every pair of real constituents; 0 elsewhere."""
        raw = constituents.index_select(-1, self.kinematics).float() * self.kinematic_scale + self.kinematic_shift
        eta, phi, pt = raw.unbind(-1)
        pt = torch.exp(pt) if self.log_pt else pt.clamp(min=0.0)
        deta = eta.unsqueeze(2) - eta.unsqueeze(1)
        dphi = torch.remainder(phi.unsqueeze(2) - phi.unsqueeze(1) + math.pi, 2 * math.pi) - math.pi
        delta = torch.sqrt(deta * deta + dphi * dphi)
        pt_i, pt_j = pt.unsqueeze(2), pt.unsqueeze(1)
        pt_min = torch.minimum(pt_i, pt_j)
        mass2 = 2.0 * pt_i * pt_j * (torch.cosh(deta) - torch.cos(dphi))
        features = torch.stack([torch.log((pt_min * delta).clamp(min=_EPS)),
                                torch.log((pt_min / (pt_i + pt_j).clamp(min=_EPS)).clamp(min=_EPS)),
                                torch.log(delta.clamp(min=_EPS)),
                                torch.log(mass2.clamp(min=_EPS))], dim=-1)
        n = mask.shape[1]
        distinct = ~torch.eye(n, dtype=torch.bool, device=mask.device)
        pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & distinct
        return features * pairs.unsqueeze(-1).to(features.dtype)

    def forward(self, constituents, mask, jets):
        constituents = impute_missing(constituents)
        real = mask.unsqueeze(-1).to(constituents.dtype)
        bias = self.pair_embed(self.pair_features(constituents, mask)).permute(0, 3, 1, 2).float()
        x = self.embed(constituents) * real
        for block in self.blocks:
            x = block(x, mask, bias) * real  # padded slots kept at 0: finite, and never attended to
        token = self.class_token.expand(x.shape[0], 1, x.shape[2]).to(x.dtype)
        # The class token is always one of its own keys: a jet without constituents has one.
        key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.class_blocks:
            token = block(torch.cat([token, x], dim=1), key_mask, class_token=True)
        summary = self.norm(token[:, 0])
        if self.n_jet_features:
            summary = torch.cat([summary, impute_missing(jets).to(summary.dtype)], dim=1)
        return self.head(summary)


class JetImageCNN(nn.Module):
    """Conv blocks (3x3 conv, ReLU, 2x2 max pool) on the images, a dense head (and the jet features).

    The pixels are divided by each jet's total over all pixels and channels: the images are
    pt-weighted in whatever units the weight column has (GeV, or fractions of the jet pt), and
    the network sees the shape; the jet's pt and mass are jet features.
    """

    def __init__(self, n_channels: int, n_jet_features: int, *, channels: Sequence[int], dense: Sequence[int],
                 dropout: float = 0.0, n_outputs: int = 1, pixels: int = 40):
        super().__init__()
        self.n_jet_features = n_jet_features
        layers: list = []
        width, size = n_channels, pixels
        for c in channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width, size = c, size // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        head, last = _dense(width * size * size + n_jet_features, dense, dropout=dropout)
        self.head = nn.Sequential(*head, nn.Linear(last, n_outputs))

    def forward(self, images, jets):
        images = impute_missing(images)
        total = images.sum(dim=(1, 2, 3), keepdim=True).clamp(min=_EPS)
        summary = self.features(images / total)
        if self.n_jet_features:
            summary = torch.cat([summary, impute_missing(jets)], dim=1)
        return self.head(summary)


def build_tagger(model: str, layout: Any, params: Mapping[str, Any], n_outputs: int,
                 constituent_stats: Mapping[str, Any] | None = None):
    """The network of ``model`` (pfn, part, cnn) for a `JetRowLayout`, freshly initialised.

    Parameters
    ----------
    layout : `analysis.train.jet_stream.JetRowLayout` (N, features, jet features, channels)
    params : the model's section of ``[train.tagger]`` (`PFNConfig`, `ParTConfig`, `CNNConfig` as a dict)
    n_outputs : `analysis.core.target.Target.n_outputs`
    constituent_stats : stats.json ``constituents`` (part: the kinematic columns' standardisation;
        a column prepare did not standardise is taken as it is)

    Raises
    ------
    ValueError
        ``model`` unknown, or part without its kinematic columns (`pair_kinematics`).
    """
    features = list(layout.constituent_features)
    n_jets = len(layout.jet_features)
    params = dict(params)
    if model == "pfn":
        return ParticleFlowNetwork(len(features), n_jets, n_outputs=n_outputs, **params)
    if model == "cnn":
        return JetImageCNN(len(layout.channels), n_jets, n_outputs=n_outputs, **params)
    if model != "part":
        raise ValueError(f"unknown tagger {model!r}; use {', '.join(TAGGER_MODELS)}")
    names = pair_kinematics(features)
    listed = Standardisation.from_stats(constituent_stats, source="stats.json constituents") \
        if constituent_stats else None
    scale, shift = [], []
    for name in names:
        if listed is not None and name in listed.features:
            s, m = listed.inverse_affine([name])
            scale.append(float(s[0]))
            shift.append(float(m[0]))
        else:
            scale.append(1.0)
            shift.append(0.0)
    return ParticleTransformer(len(features), n_jets, kinematics=tuple(features.index(n) for n in names),
                               log_pt=names[2] == "cand_logpt", scale=scale, shift=shift,
                               n_outputs=n_outputs, **params)
