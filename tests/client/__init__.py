"""Tests of the Python client and its CLI, against an in-process fake server."""
