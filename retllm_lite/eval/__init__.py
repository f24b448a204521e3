"""Evaluate retrieval the way the RetLLM paper does: Recall@K, coarse vs fine stage.

``datasets`` reads Karpathy-split JSON, JSONL and caption folders; ``metrics`` holds the
Recall@K math; ``runner`` runs the coarse stage (exact CLIP similarity) and the fine
stage (VLM rerank of the top-k) for every configuration, with ``cache`` keeping CLIP
vectors and VLM scores across runs; ``report`` prints and writes the results.
See docs/eval.md.
"""
