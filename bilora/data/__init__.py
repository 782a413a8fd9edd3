"""Datasets: sources, canonical layout, manifests, loading and perturbations."""
