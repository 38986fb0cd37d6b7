"""Typed, validated views of kernel objects read through a Target and its layouts.

Each view knows how to tell a real object from noise: its ``problems`` say why a candidate is not
(or not quite) the object it claims to be.
"""

# Flag words whose names are remembered (kernel/io.py, kernel/mdl.py): the objects of one hunt share a
# few values, and damaged memory cannot grow the cache beyond this.
FLAG_NAMES_CACHED = 256
