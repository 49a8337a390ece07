"""Trident service."""
