"""Data I/O: the canonical FER table, its sources and the synthetic face generator."""
