"""memae-dist: distributed MemAE (Gong et al., ICCV 2019) training, scoring and sweeps on Ray."""

__version__ = "0.1.0"
