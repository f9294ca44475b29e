"""Comparing masks and images: agreement metrics (volume, overlap, surface distances), set operations."""
