"""Dissection of one or more layers (paper Sec. 3.1; docs/method.md §1-§4).

The pipeline, in the order data flows: ``runner`` runs the generator (traced) and
the segmenter batch by batch; ``upsample`` / ``upsample_blocks`` bring featuremaps to
the segmentation's size; ``thresholds`` picks each unit's activation threshold
(quantile or iqr mode); ``tally`` counts, per unit and concept, the pixels where the
unit is on, the concept is present and both (integer counts that add across batches
and ranks); ``results`` turns the counts into IoU, labels and the
``DissectionResult``. ``pipeline.dissect`` is the entry point and ``options`` its
validated settings (``DissectionOptions``).
"""
