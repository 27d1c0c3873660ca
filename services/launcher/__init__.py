"""The composition root: the only package that wires services together (edgeinfer up / run)."""
