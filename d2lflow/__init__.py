"""d2lflow's public API for using registered models: `d2lflow.load("word2vec@champion")` builds the
model from this installed code and the hash-checked weights and config only (tasks/loader.py)."""

from tasks.loader import LoadedModel, load

__all__ = ["LoadedModel", "load"]
