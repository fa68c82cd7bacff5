"""Weakly supervised semantic segmentation workflow package."""

__version__ = "0.1.0"
