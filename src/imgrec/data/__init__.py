"""Datasets as uint8 image tensors, stratified splits, and batch loaders."""
