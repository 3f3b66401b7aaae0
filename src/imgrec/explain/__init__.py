"""Explanations of a trained model's decisions: Grad-CAM, Grad-CAM++ and integrated gradients (via Captum)."""
