"""Re-ViLM: retrieval-augmented image-to-text on a frozen llama LM (README.md)."""
