"""The prototype bank: its file, how it is built from references, and how it is described."""
