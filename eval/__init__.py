"""Trident eval."""
