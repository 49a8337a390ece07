"""Trident indexers."""
