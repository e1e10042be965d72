"""Per-unit FID and artifact units (paper Sec. 4.2; docs/method.md §6).

``features`` (image feature extractors: the embedded toy one, Inception through the
optional torch-fidelity), ``frechet`` (the Fréchet distance and real statistics),
``unit_fid`` (FID of each unit's top images, and ablating the worst units).
"""
