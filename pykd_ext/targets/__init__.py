"""Sources of kernel memory behind the one Target interface (see base.py)."""
