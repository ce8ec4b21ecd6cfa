"""Dataset loaders for the real on-disk formats, and writers of tiny fake files in those formats."""
