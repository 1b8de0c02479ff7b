"""Nodule app: synthetic chest CT phantoms with ground truth (LIDC shapes), DICOM writing, CLI."""
