"""CLIP-IT: pair labelled images with passages of an unpaired report corpus (``python -m training pair``).

``passages`` reads a corpus and splits long reports into passages that fit the text model's
context; ``pair`` finds each image's top-k passages with FAISS and writes the report;
``cli`` is the command.
"""
