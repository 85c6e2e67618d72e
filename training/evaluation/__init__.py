"""Evaluation of trained models (caption metrics, ...)."""
