"""Fathom's connectors to the outside world (DICOM, transaction streams, knowledge bases)."""
