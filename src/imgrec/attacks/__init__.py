"""Adversarial attacks on trained models (issue #19)."""
