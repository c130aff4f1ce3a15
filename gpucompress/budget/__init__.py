"""Compress to a budget: choose each tensor's codebook size from rate-distortion curves.

curves.py measures, per clustered tensor, the error (SSE) and the archive bytes
at every k in {2, 4, ..., n_clusters} and of keeping it exact; allocate.py picks
one point per tensor by a Lagrangian sweep over the curves' convex hulls (no
TensorFlow); sensitivity.py runs the model to turn SSE into output error;
plan.py ties these to the three targets (bits per weight, archive bytes, output
error) and returns a Plan: {tensor name: k}, which compress and pack honour
through cluster_weights(..., clusters=plan.clusters).
"""
