"""Generated protobuf and gRPC code for the saeserve v1 API (package ``saeserve.v1``).

Do not edit the ``*_pb2*`` modules here: they are produced from
``protos/saeserve/v1/*.proto`` by ``python protos/generate.py`` and a test fails when they
are stale. Import them as ``from saeserve.v1 import saeserve_pb2, saeserve_pb2_grpc``;
they need only grpcio and protobuf (no torch, no ray). The generated code pins its
runtime: grpcio >= 1.85.1 and protobuf >= 7.35.1.
"""
