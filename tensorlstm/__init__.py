"""tensorlstm: an experiment runner for tensorized and tensor-decomposed recurrent networks."""

__version__ = "0.1.0"
