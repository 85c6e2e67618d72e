"""ClipCap training: image embeddings once (``encode``), then the mapper (and decoder) (``train``)."""
