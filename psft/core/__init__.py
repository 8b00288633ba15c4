"""The objective (loss registry), the rollout schedule, the trainer and its run state."""
