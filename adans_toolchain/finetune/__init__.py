"""Recovering accuracy after compression: fine-tuning the emitted (physically smaller) model."""
