"""Robustness of trained models (issue #19): adversarial attacks and common corruptions."""
