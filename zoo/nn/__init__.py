"""Reference math shared by every family: norms, rotary embeddings, attention, MLPs, the decoder stack."""
