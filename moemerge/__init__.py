"""moemerge: build frankenMoE checkpoints (Mixtral and friends) from a base model and fine-tuned experts."""

__version__ = "0.1.0"
