"""saeserve: a causal language model with sparse autoencoders, served over gRPC.

This top-level package imports nothing heavy: the client and the generated protobuf
code (``saeserve.v1``) must import without torch or ray. The engine lives in
``saeserve.engine``, the model in ``saeserve.model``, SAEs in ``saeserve.sae`` and the
Ray Serve application in ``saeserve.server``.
"""

__version__ = "0.1.0"
