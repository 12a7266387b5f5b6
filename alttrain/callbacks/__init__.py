"""Trainer callbacks: logging, samples, checkpoints, metrics, progress."""
