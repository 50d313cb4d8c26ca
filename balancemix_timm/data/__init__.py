"""Data sets, transforms and the offline multi-label demo data set (COCO-format)."""
