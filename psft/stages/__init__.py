"""Stages after fine-tuning: RL (GRPO), DPO, their rewards, and the SFT->stage chain."""
