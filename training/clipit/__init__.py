"""CLIP-IT: pair labelled images with passages of an unpaired report corpus (``python -m training pair``),
then distil the passages into a vision-only classifier (``python -m training clipit``).

``passages`` reads a corpus and splits long reports into passages that fit the text model's
context; ``pair`` finds each image's top-k passages with FAISS and writes the report; ``cli``
is the pairing command. ``data`` (images, patches, pairs), ``teacher`` (passage embeddings and
the text MLP), ``student`` (image tower, heads, loss), ``train`` (one arm) and ``pipeline``
(the run: teacher, baseline, CLIP-IT, report, bundle) make ``train_cli``, the training command.
"""
