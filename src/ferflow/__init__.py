"""ferflow: an experiment-tracked MLOps pipeline for facial expression recognition."""

__version__ = "0.1.0"
