"""Evaluation of talkers against ground truth: metrics (``metrics``) and the
self-driven / novel-view / new-voice protocol (``evaluate``)."""
