"""Recorders: real game engines (ViZDoom) and footage (video import) → datasets."""
