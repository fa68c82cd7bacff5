"""DeepLab retrained on pseudo-labels: the segmentation network a WSSS paper finally reports.

`training` fits a DeepLab (the network is `wsss.models.deeplab`) to a label store with the
generic trainer; `predict` labels a split by multi-scale + flip inference, with and without
DeepLab's dense CRF. This stage reads label stores only, never a WSSS method.
"""
