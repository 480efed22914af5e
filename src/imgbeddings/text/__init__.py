"""Text queries (opt-in): a CLIP/SigLIP text tower exported with ``imgbeddings export --text``
turns strings into vectors in its paired image model's space. :mod:`.card` (the text card),
:mod:`.tokenize` (``tokenizers`` for CLIP, ``sentencepiece`` for SigLIP: exactly the checkpoint's
tokenizer's ids), :mod:`.embedder`
(``TextEmbedder``, pairing with outputs). The image side never depends on this package."""
