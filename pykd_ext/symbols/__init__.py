"""Kernel symbols offline: PDB and volatility3 ISF readers, the symbol path, and symbol servers."""
