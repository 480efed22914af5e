"""Uses of embedded vectors: search, near-duplicates, clusters, a map, classifiers.

Every consumer reads an output folder (or plain arrays) through
:class:`~imgbeddings.analysis.vectors.VectorSet`; none reaches back into images or the runtime
except through :class:`~imgbeddings.Embedder` (to embed a query image). Heavy libraries (faiss,
umap-learn, matplotlib) come with the ``[analysis]`` extra and are imported on first use.
"""
