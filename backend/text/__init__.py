"""Text for vision-language tasks: corpora read from disk, reports split into passages that fit
a text model's context, and noun phrases of a caption. Imports neither torch nor pandas."""
