"""Typed, validated views of kernel objects read through a Target and its layouts.

Each view knows how to tell a real object from noise: its ``problems`` say why a candidate is not
(or not quite) the object it claims to be.
"""
