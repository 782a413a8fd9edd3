"""Baseline detectors (timm ResNet50 / Xception) on the bilora detector interface."""
