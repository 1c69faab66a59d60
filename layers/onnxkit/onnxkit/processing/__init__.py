"""Processing declared with a model and versioned with it: text, images in; labels, scores out.

Declarations are data only (a manifest's ``processing`` object); the files they name (a
tokenizer, a labels file) are listed in the manifest with their sha256 and verified like the
model. Nothing executable ever comes from an artifact.
"""
