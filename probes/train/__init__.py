"""Training the model organism: SFT and GRPO through TRL (``python -m probes.train``)."""
