"""MCN losses (Chen et al., ICCV 2021; docs/recipes.md section 8): MMS, clustering, reconstruction.

Similarity convention of mft_train.losses (the diagonal holds the positives); MCN uses raw dot
products (no normalisation, no temperature).

total = mms_weight * (MMS(t,v) + MMS(a,t) + MMS(a,v))
      + cluster_weight * (CL(t) + CL(v) + CL(a) + CL(fused))      once centroids exist
      + recon_weight * (MSE(v) + MSE(a) + MSE(t))                 recon_weight = 50 in the paper
Each term drops the rows where one of its modalities is empty. The fused vector of a row is the
mean of its present modalities' embeddings ((v + a + t) / 3 when all three are present).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from mft_train.losses.graph import zero_through_every_embedding
from mft_train.losses.kmeans import FeatureQueue, KMeans, assign_cosine
from mft_train.losses.settings import MCNLossConfig

MMS_PAIRS = {"t_v": ("t", "v"), "a_t": ("a", "t"), "a_v": ("a", "v")}
MODALITY_KEYS = ("t", "v", "a")


def mms_loss(sim: torch.Tensor, margin: float = 0.001) -> torch.Tensor:
    """Max-margin softmax on a square (N, N) similarity matrix.

    The margin is subtracted from the diagonal, then softmax cross-entropy is taken over the rows
    (query -> targets) and over the columns (target -> queries). Each direction is the mean over the
    N rows; the two means are summed. Computed in float32.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"mms_loss needs a square similarity matrix, got shape {tuple(sim.shape)}")
    n = sim.shape[0]
    logits = sim.float() - margin * torch.eye(n, device=sim.device)
    targets = torch.arange(n, device=sim.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)


def cluster_loss(emb: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, margin: float = 0.001) -> torch.Tensor:
    """Cross-entropy of emb (N, D) against the K centroids (dot products), label = assigned cluster.

    The margin is subtracted from each row's label logit (as MMS does on its diagonal); mean over N.
    Centroids are constants here: only the embeddings receive gradients.
    """
    logits = emb.float() @ centroids.detach().float().t()
    logits = logits - margin * F.one_hot(labels, num_classes=centroids.shape[0]).to(logits.dtype)
    return F.cross_entropy(logits, labels)


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a reconstruction head's output and its target (the model decides what is detached)."""
    return F.mse_loss(prediction.float(), target.float())


class ClusterState:
    """Queue of recent fused embeddings + K-means centroids + step counter (MCN's online clustering).

    `update(fused)` is called once per training step with the (detached) fused embeddings of the
    global batch: it pushes them into the queue, counts the step, and every `refit_every` steps refits
    K-means on the queue, warm-started from the current centroids (k-means++ the first time). No
    centroids exist until the queue holds at least `clusters` vectors at a refit step, so the
    clustering terms start late. Every rank sees the same gathered batch and the same seed, so every
    rank holds the same centroids without communication.
    """

    def __init__(self, dim: int, config: MCNLossConfig) -> None:
        self.config = config
        self.queue = FeatureQueue(config.queue_size, dim)
        self.kmeans = KMeans(config.clusters, iters=config.kmeans_iters, init=config.kmeans_init, seed=config.seed)
        self.centroids: torch.Tensor | None = None
        self.step = 0
        self.fits = 0

    def update(self, fused: torch.Tensor) -> bool:
        """Push this step's fused vectors; refit when due. Returns True when a refit happened."""
        self.queue.push(fused.detach())
        self.step += 1
        if self.step % self.config.refit_every or len(self.queue) < self.config.clusters:
            return False
        self.centroids = self.kmeans.fit(self.queue.values(), init=self.centroids)
        self.fits += 1
        return True

    def state_dict(self) -> dict:
        centroids = None if self.centroids is None else self.centroids.cpu()
        return {"queue": self.queue.state_dict(), "centroids": centroids, "step": self.step, "fits": self.fits}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.queue.load_state_dict(state["queue"], device)
        self.centroids = None if state["centroids"] is None else state["centroids"].to(device)
        self.kmeans.centroids = self.centroids
        self.step, self.fits = int(state["step"]), int(state["fits"])


def fused_embedding(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each row's present modality embeddings, and a flag for rows with at least one present."""
    present = torch.stack([~out[f"{m}_empty"].bool() for m in MODALITY_KEYS], dim=1)  # (B, 3)
    stacked = torch.stack([out[m].float() for m in MODALITY_KEYS], dim=1)  # (B, 3, D)
    count = present.sum(dim=1, keepdim=True).clamp(min=1)
    fused = (stacked * present[..., None]).sum(dim=1) / count
    return fused, present.any(dim=1)


def mcn_loss(out: dict[str, torch.Tensor], state: ClusterState, cfg: MCNLossConfig | dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MCN's total loss for one step and its detached terms; advances `state` by one step.

    The clustering terms use the centroids held *before* this step's update (labels = cosine
    assignment of the fused vectors), then the fused vectors enter the queue. `out` is the model
    output: t, v, a embeddings, *_empty flags, recon_* predictions and target_* features.
    """
    config = cfg if isinstance(cfg, MCNLossConfig) else MCNLossConfig.from_dict(cfg)
    valid = {m: ~out[f"{m}_empty"].bool() for m in MODALITY_KEYS}
    terms: dict[str, torch.Tensor] = {}
    total = zero_through_every_embedding(out)

    for term, (query, target) in MMS_PAIRS.items():
        rows = valid[query] & valid[target]
        if config.mms_weight > 0 and bool(rows.any()):
            loss = mms_loss(out[query][rows] @ out[target][rows].t(), config.margin)
            terms[f"mms_{term}"] = loss.detach()
            total = total + config.mms_weight * loss

    fused, fused_rows = fused_embedding(out)
    if config.cluster_weight > 0 and state.centroids is not None:
        labels = assign_cosine(fused, state.centroids)
        candidates = {**{m: (out[m], valid[m]) for m in MODALITY_KEYS}, "fused": (fused, fused_rows)}
        for name, (emb, rows) in candidates.items():
            if bool(rows.any()):
                loss = cluster_loss(emb[rows], state.centroids, labels[rows], config.margin)
                terms[f"cluster_{name}"] = loss.detach()
                total = total + config.cluster_weight * loss

    if config.recon_weight > 0:
        for m in MODALITY_KEYS:
            rows = valid[m]
            if bool(rows.any()):
                loss = reconstruction_loss(out[f"recon_{m}"][rows], out[f"target_{m}"][rows])
                terms[f"recon_{m}"] = loss.detach()
                total = total + config.recon_weight * loss

    state.update(fused[fused_rows])  # every step counts, even one without a usable row
    return total, terms
