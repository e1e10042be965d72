"""Segmenters: images in [-1, 1] to per-pixel concept labels.

``base`` (the ``Segmenter`` protocol and its checks), ``color`` (colour terms),
``parts`` (object parts from connected components), ``huggingface`` and ``ade20k``
(ADE20K models through the optional transformers), ``specs`` (building one from a
short text spec, as the CLI does). The toy world's own segmenter is in
``gan_monitor.toyworld``.
"""
