"""The merge engine: many single-concept LoRAs into one model (LoRACLR and its baselines)."""
