"""DSCNet (Lai & Vong, arXiv 2405.04913): dual-stream contrast of pixel groups and class nodes.

A plug-in (`wsss.methods.plugin`) on SEAM or the CAM baseline (`dscnet.base`). No code was
published; the paper's section III leaves most of the model open and several of its equations
(5, 8, 9, 10) are ambiguous or dimensionally inconsistent, so the reading below is ours. Every
choice has a config key in the `dscnet:` block (defaults in the schema of `REGISTER`).

Where. DSCNet works on the base's first view only (the crop): its features `feat` (B, D, h, w),
last backbone stage, and the map the base infers from, `pseudo` (SEAM: the PCM-revised CAM;
baseline: the CAM). `view_scale()` returns `dscnet.view_scale` (None): the baseline is not given
a second view it would not use; SEAM keeps its own two views for its own losses.

Embedding. A projector (1×1 conv D -> `embed_dim` (128), ReLU, 1×1 conv 128 -> 128), each
cell's embedding e L2-normalised.

Pixel groups (PGCL, eq. 4–5). Eq. 4 relates cells by the Pearson correlation of their features;
the Pearson correlation of two vectors is the cosine of the vectors centred over their channels.
So each image's cells are clustered by spherical k-means on the centred, unit embeddings
(`pearson_unit`, `pearson_kmeans`), into G_i = |Y_i| + 1 groups (`background_group`: the
background counts as a category; with |Y_i| groups an image of one class would have one group,
the whole image, and nothing to contrast; `background_group: false` gives the paper's |Y_i|
groups and no background class anywhere). The k-means is deterministic: the first centre is the
cell closest to the image's mean direction, the others farthest-point (each the cell least
similar to the centres so far, k-means++ without the sampling), then `kmeans_iterations` (10)
Lloyd steps (assign to the most similar centre, centre := normalised member sum; a centre that
loses all members keeps its place), stopped early when the assignment repeats. Groups left empty
are dropped. It runs without gradient: assignments are indices and the centroids are constants.
Eq. 5 as printed averages over the groups as well and would give one vector per image; we read
it as one representation per group, p_{i,u} = mean of the (uncentred, unit) embeddings of the
group's cells, with gradient (`group_features`).

Group classes (M of eq. 8). The paper's M is "the probability of group p_{i,u} belonging to the
k-th category", never defined. Ours (`class_scores`, `group_classes`): the base's pseudo map,
detached, ReLU'd and divided by its per-channel maximum over the image (the baseline's CAM
normalisation; stores of SEAM-based variants are min-max normalised), restricted to the
image's labelled classes; a background score per cell of
`bg_threshold` (0.15, the workflow's default CAM background threshold, IRN's cam_eval_thres:
eq. 2's pseudo labels are the argmax of the CAM with a background plane, and this is the plane
the workflow itself uses); `bg_threshold: null` takes 1 - max foreground instead (SEAM's
convention, which amounts to a threshold of 0.5 and labels much of a CAM's under-activated
object as background). M_{u,k} = mean of score k over the group's cells, normalised over the
image's classes (K'_i = |Y_i| (+1) of them); no gradient. A group's class is the argmax of its
row. Class ids are global: 0 background, c + 1 foreground class c.

L_PGCL (eq. 6–7). Supervised multi-positive InfoNCE (`contrast.multi_positive_nce`) over all
groups of the batch at temperature `tau` (0.1; the paper gives none, HSC and PPC use 0.1):
positives are the other groups of the same class, of other images and of the same image (two
background groups of one image are both background); every other group is in the denominator.
Anchors without a positive are left out; the mean over anchors stands for eq. 7's averages.

Semantic nodes and L_SGCL (eq. 8–9). Eq. 8 sums over both u and k and so yields one vector that
does not depend on k; we read S_i^k as the M-weighted mean of the image's group representations,
s_i^k = sum_u M_{u,k} p_{i,u} / sum_u M_{u,k}, one node per image and present class (background
included), K'_i × E (`semantic_nodes`). The paper's "graph" has no further equation (no GCN
layer is specified), so the nodes are contrasted directly: multi-positive InfoNCE over all nodes
of the batch, class id as label (the nodes of one image all differ in class, so positives are the
same class in other images). Eq. 9's pseudo labels enter through M.

Dual-stream fusion (DSCL, eq. 10–12). softmax(f C^T) S with C (|Y_i| × D) and S (|Y_i| × K)
gives WH × K, not the WH × D the paper claims. Our dimensionally consistent reading (`fuse`):
attention of each cell over the image's groups, A = softmax_u(cos(centred e_p, C_u) /
`attention_tau`) with C the k-means centroids (so A is a soft k-means assignment: the hard one
as attention_tau -> 0); semantic group features G^sem = M S (G_i × E, each group described by the
class nodes it belongs to); f̃ = A G^sem (N × E). f̂ = [feat, f̃] (D + E channels) and the refined
CAM Ô = a separate 1×1 conv (D + E -> C, no bias; eq. 11's F_CAM is "applied independently" of
eq. 1's), trained by L_CE = multilabel soft margin on the global average of Ô (the paper's
"cross-entropy on the refined CAM maps" with image labels only). Gradient reaches the backbone
through feat and, through e (attention and group representations), the projector.
The groups' classes keep coming from the base's map during training (eq. 12's updated pseudo
labels are what `cams` returns to the workflow's later stages).

Loss (eq. 13): alpha · L_PGCL + beta · L_SGCL + ce_weight · L_CE, alpha 0.6 and beta 0.4 (the
paper's best), ce_weight 1, added to the base's own loss. Keys "pgcl", "sgcl", "ce" are logged at
every step (zero when switched off). `components` switch the terms for Table IV: M1 = {pgcl},
M2 = {sgcl}, M3 = {pgcl, sgcl} without fusion ("independently"), M4 = all three. Without
fusion the refined classifier is never trained and CAMs come from the base.

Inference (`cams`). With `infer_from: refined` and fusion on: the foreground channels of Ô on
the feature grid, computed image by image (batches hold views of one size, never zero-padded:
k-means and the max-normalisation of the base's map would run over padded cells). Groups come
from the given labels; without labels from the classes whose base classification score (global
average of the base's CAM over the image) is positive, at least the top one: the refined
scores cannot choose the groups because they depend on them. `infer_from: base` returns the
base's CAMs. Deterministic.

Cost: per image a k-means over N cells (N × G × E per step) and an N × G attention; the loop over
images is in Python, everything inside it vectorised.

Measured figures (Table IV's rows, workflow/configs/ablations/dscnet_modules.yaml, with
DeepLab retrained per row; three training seeds, seeds.yaml) are in the README's "Methods"
section, not here, where they would go stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.methods.base import View, register
from wsss.methods.contrast import cosine, masked_average_pool, multi_positive_nce, unit
from wsss.methods.plugin import PluginMethod

# The registry's declaration, read without importing torch. `schema` is the `dscnet:` block of a
# method; its defaults (every one ours) are the only place they are written.
REGISTER = {
    "kind": "method", "name": "dscnet", "block": "dscnet", "base": False, "plugin": True,
    "order": 3,
    "schema": {
        "description": "DSCNet's settings (method dscnet); every default is ours "
                       "(wsss/methods/dscnet.py)",
        "type": "object", "additionalProperties": False,
        "properties": {
            "base": {"$ref": "#/$defs/plugin_base", "default": "seam"},
            "alpha": {"type": "number", "minimum": 0, "default": 0.6},
            "beta": {"type": "number", "minimum": 0, "default": 0.4},
            "ce_weight": {"type": "number", "minimum": 0, "default": 1.0},
            "tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "attention_tau": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "embed_dim": {"type": "integer", "minimum": 1, "default": 128},
            "kmeans_iterations": {"type": "integer", "minimum": 1, "default": 10},
            "background_group": {"type": "boolean", "default": True},
            "bg_threshold": {"description": "constant background score of the groups' class "
                                            "weights; null = 1 - max fg",
                             "type": ["number", "null"], "minimum": 0, "maximum": 1,
                             "default": 0.15},
            "infer_from": {"enum": ["refined", "base"], "default": "refined"},
            "view_scale": {"type": ["number", "null"], "exclusiveMinimum": 0,
                           "exclusiveMaximum": 1, "default": None},
            "components": {"type": "object", "additionalProperties": False, "properties": {
                "pgcl": {"type": "boolean", "default": True},
                "sgcl": {"type": "boolean", "default": True},
                "fusion": {"type": "boolean", "default": True}}},
        },
    },
}
EPS = 1e-6
INFER_FROM = tuple(REGISTER["schema"]["properties"]["infer_from"]["enum"])


# -- pure pieces ---------------------------------------------------------------------------------
def pearson_unit(x: torch.Tensor) -> torch.Tensor:
    """Rows (N, E) centred over their channels and L2-normalised: the cosine of two such rows is
    the Pearson correlation of the originals (eq. 4's geometry)."""
    return unit(x - x.mean(dim=-1, keepdim=True))


@torch.no_grad()
def pearson_kmeans(x: torch.Tensor, groups: int,
                   iterations: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of the rows of x (N, E) in the Pearson geometry, deterministic.

    Returns (assignment (N,) long in [0, G'), centroids (G', E) unit, centred), G' <= `groups`
    the number of non-empty groups (ids renumbered in order). Init: the row closest to the mean
    direction, then farthest-point. No gradient.
    """
    xc = pearson_unit(x.detach().float())
    n = xc.shape[0]
    g = max(1, min(int(groups), n))
    first = int(torch.argmax(xc @ unit(xc.sum(dim=0))))
    chosen = [first]
    closest = xc @ xc[first]
    for _ in range(1, g):
        nxt = int(torch.argmin(closest))
        chosen.append(nxt)
        closest = torch.maximum(closest, xc @ xc[nxt])
    centroids = xc[chosen].clone()
    assign = torch.argmax(xc @ centroids.T, dim=1)
    for _ in range(iterations):
        onehot = F.one_hot(assign, g).to(xc.dtype)  # (N, G)
        sums = onehot.T @ xc
        counts = onehot.sum(dim=0)
        centroids = torch.where(counts[:, None] > 0, unit(sums), centroids)
        new = torch.argmax(xc @ centroids.T, dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    used = torch.bincount(assign, minlength=g) > 0
    remap = torch.cumsum(used.long(), dim=0) - 1
    return remap[assign], centroids[used]


def group_features(emb: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """Mean of the rows of emb (N, E) per group: (G, E), with gradient (eq. 5, per group)."""
    masks = F.one_hot(assign, groups).T.to(emb.dtype)  # (G, N)
    pooled, _ = masked_average_pool(emb.T[None], masks[None])
    return pooled[0]


def class_scores(pseudo: torch.Tensor, label: torch.Tensor, bg_threshold: float | None,
                 background: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell scores of an image's classes from the base's map, no gradient.

    pseudo (C, N) raw map, label (C,) 0/1 -> (scores (K', N), class ids (K',)): ReLU, divided by
    each channel's maximum, the labelled channels only; with `background` a first row, the
    constant `bg_threshold` or (None) 1 - the maximum of the labelled rows. Ids: 0 background,
    c + 1 foreground class c.
    """
    with torch.no_grad():
        p = F.relu(pseudo.detach().float())
        p = p / (p.amax(dim=1, keepdim=True) + EPS)
        present = torch.nonzero(label > 0.5).flatten()
        fg = p[present]
        ids = present + 1
        if not background:
            return fg, ids
        if bg_threshold is None:
            peak = fg.amax(dim=0) if len(fg) else torch.zeros_like(p[0])
            bg = 1.0 - peak
        else:
            bg = torch.full_like(p[0], float(bg_threshold))
        return torch.cat([bg[None], fg]), torch.cat([ids.new_zeros(1), ids])


def group_classes(scores: torch.Tensor, assign: torch.Tensor, groups: int) -> torch.Tensor:
    """M (G, K'): mean of each class score (K', N) over each group's cells, each row normalised
    to sum 1 over the image's classes. No gradient; a group's class is the argmax of its row."""
    with torch.no_grad():
        masks = F.one_hot(assign, groups).T.to(scores.dtype)
        means, _ = masked_average_pool(scores.detach()[None], masks[None])
        means = means[0].clamp_min(0)
        return means / (means.sum(dim=1, keepdim=True) + EPS)


def semantic_nodes(reps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """S (K', E): per class k the M-weighted mean of the group representations,
    sum_u M_uk p_u / sum_u M_uk (eq. 8), reps (G, E), weights M (G, K')."""
    return (weights.T @ reps) / (weights.sum(dim=0)[:, None] + EPS)


def fuse(emb: torch.Tensor, centroids: torch.Tensor, weights: torch.Tensor,
         nodes: torch.Tensor, attention_tau: float) -> torch.Tensor:
    """f̃ (N, E) of eq. 10: softmax over groups of cos(centred e_p, C_u) / attention_tau,
    times the semantic group features M S (G, E). emb (N, E), centroids (G, E), M (G, K'),
    S (K', E)."""
    attn = torch.softmax(cosine(pearson_unit(emb), centroids) / attention_tau, dim=1)
    return attn @ (weights @ nodes)


def contrast(x: torch.Tensor, classes: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean multi-positive InfoNCE of rows x (N, E) with class ids (N,); a zero that keeps the
    graph when no row has a positive."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    per = multi_positive_nce(x, classes, tau)
    return per.mean() if per.numel() else x.sum() * 0.0


@dataclass
class Groups:
    """One image's pixel groups and class nodes."""

    assign: torch.Tensor  # (N,) long group of each cell
    centroids: torch.Tensor  # (G, E) k-means centres (Pearson geometry, constant)
    reps: torch.Tensor  # (G, E) p_u, with gradient
    weights: torch.Tensor  # (G, K') M, no gradient
    classes: torch.Tensor  # (K',) global class ids of M's columns
    nodes: torch.Tensor  # (K', E) semantic nodes, with gradient

    @property
    def group_classes(self) -> torch.Tensor:
        """(G,) class id of each group: the argmax of its row of M."""
        return self.classes[self.weights.argmax(dim=1)]


def image_groups(emb: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                 iterations: int) -> Groups | None:
    """Groups of one image: emb (N, E) unit embeddings, scores (K', N) and class ids (K',) from
    `class_scores`; K' groups (None when the image has no class at all)."""
    if len(classes) == 0:
        return None
    assign, centroids = pearson_kmeans(emb, len(classes), iterations)
    g = centroids.shape[0]
    reps = group_features(emb, assign, g)
    weights = group_classes(scores, assign, g)
    return Groups(assign, centroids, reps, weights, classes, semantic_nodes(reps, weights))


# -- the method ------------------------------------------------------------------------------
@register(REGISTER["name"])
class DSCNet(PluginMethod):
    """Projector, pixel groups, class nodes, dual-stream fusion and a refined CAM classifier on
    top of SEAM or the CAM baseline; see the module doc."""

    def __init__(self, cfg: dict[str, Any], num_classes: int):
        super().__init__(cfg, num_classes)
        s = self.settings
        if s["infer_from"] not in INFER_FROM:
            raise ValueError(f"{self.block}.infer_from: choose one of {list(INFER_FROM)}, "
                             f"got {s['infer_from']!r}")
        d, e = self.feat_dim, int(s["embed_dim"])
        self.projector = nn.Sequential(nn.Conv2d(d, e, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(e, e, 1))
        self.refined_classifier = nn.Conv2d(d + e, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.refined_classifier.weight)

    def heads(self) -> list[nn.Module]:
        return [self.projector, self.refined_classifier]

    def view_scale(self) -> float | None:
        """DSCNet uses view 1 only: no extra view for the baseline (SEAM keeps its own)."""
        return self.settings.get("view_scale")

    @property
    def fusion(self) -> bool:
        return bool(self.settings["components"]["fusion"])

    def embed(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, E, h, w) unit embeddings."""
        return unit(self.projector(feat.float()), dim=1)

    def groups(self, emb: torch.Tensor, pseudo: torch.Tensor,
               label: torch.Tensor) -> Groups | None:
        """One image's groups: emb (E, h, w), the base's map (C, h, w), label (C,)."""
        s = self.settings
        scores, classes = class_scores(pseudo.flatten(1), label, s["bg_threshold"],
                                       bool(s["background_group"]))
        return image_groups(emb.flatten(1).T, scores, classes, int(s["kmeans_iterations"]))

    def fused(self, emb: torch.Tensor, groups: Groups | None) -> torch.Tensor:
        """f̃ (E, h, w) of one image (zeros without groups)."""
        if groups is None:
            return torch.zeros_like(emb)
        e, h, w = emb.shape
        out = fuse(emb.flatten(1).T, groups.centroids, groups.weights, groups.nodes,
                   float(self.settings["attention_tau"]))
        return out.T.reshape(e, h, w)

    def refine(self, feat: torch.Tensor, ftilde: torch.Tensor) -> torch.Tensor:
        """Refined CAM Ô = F_CAM([feat, f̃]) (B, C, h, w), eq. 11."""
        return self.refined_classifier(torch.cat([feat.float(), ftilde], dim=1))

    def refined_cam(self, feat: torch.Tensor, pseudo: torch.Tensor,
                    label: torch.Tensor) -> torch.Tensor:
        """Ô (C, h, w) of one image from its features (D, h, w), the base's map (C, h, w) and
        its labels (C,)."""
        emb = self.embed(feat[None])[0]
        ftilde = self.fused(emb, self.groups(emb, pseudo, label))
        return self.refine(feat[None], ftilde[None])[0]

    def plugin_losses(self, views: list[View], labels: torch.Tensor,
                      step: int) -> dict[str, torch.Tensor]:
        s = self.settings
        on = s["components"]
        view = views[0]
        emb = self.embed(view.feat)
        pseudo = view.pseudo.detach()
        per = [self.groups(emb[i], pseudo[i], labels[i]) for i in range(len(emb))]
        found = [g for g in per if g is not None]
        zero = emb.new_zeros(())
        pgcl = sgcl = ce = zero
        if on["pgcl"] and found:
            pgcl = contrast(torch.cat([g.reps for g in found]),
                            torch.cat([g.group_classes for g in found]), float(s["tau"]))
        if on["sgcl"] and found:
            sgcl = contrast(torch.cat([g.nodes for g in found]),
                            torch.cat([g.classes for g in found]), float(s["tau"]))
        if on["fusion"]:
            ftilde = torch.stack([self.fused(emb[i], g) for i, g in enumerate(per)])
            cam = self.refine(view.feat, ftilde)
            ce = F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3)), labels)
        total = s["alpha"] * pgcl + s["beta"] * sgcl + s["ce_weight"] * ce
        return {"loss": total, "pgcl": pgcl, "sgcl": sgcl, "ce": ce}

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def cams(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Refined CAMs' foreground channels (B, C, h, w), image by image (k-means and the
        normalisation run per image); the base's CAMs with `infer_from: base` or without
        fusion."""
        if self.settings["infer_from"] != "refined" or not self.fusion:
            return self.base.cams(images, labels)
        view = self.base.inference_view(images)
        out = []
        for i in range(images.shape[0]):
            label = predicted_labels(view.cam[i].mean(dim=(1, 2))) if labels is None else labels[i]
            out.append(self.refined_cam(view.feat[i], view.pseudo[i], label))
        return torch.stack(out)


def predicted_labels(scores: torch.Tensor) -> torch.Tensor:
    """(C,) 0/1: the classes with a positive score, at least the top-scoring one."""
    label = (scores > 0).float()
    label[torch.argmax(scores)] = 1.0
    return label
