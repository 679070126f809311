"""Losses: what a training step minimises.

- combinatorial: Everything-at-Once's six NormSoftmax terms and the paper's weights.
- mcn: MCN's max-margin softmax, online clustering and reconstruction terms, with its cluster state.
- kmeans: the cosine K-means and feature queue behind MCN's clustering.
- settings: the loss section's dataclasses without torch (a config is checked before heavy imports).
- objectives: the loss section of a config -> the callable the trainer steps (with checkpointable state).
- graph: the zero that keeps every embedding in the graph, so DDP sees a gradient for every parameter.

Convention shared by every loss: sim[i, j] = query i against target j; the diagonal holds the positives.
Losses are rank-agnostic: under DDP the trainer gathers embeddings from all ranks (with gradients)
before calling them, so the negatives span the global batch.
"""
