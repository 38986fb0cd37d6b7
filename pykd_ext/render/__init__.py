"""Renderers: the last step, turning a Report into text, DML or JSON."""
