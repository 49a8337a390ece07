"""Trident encoders."""
