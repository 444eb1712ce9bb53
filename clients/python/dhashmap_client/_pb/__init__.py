"""Code generated from proto/dhashmap/v1/peer.proto and kv.proto by `make proto`; do not edit.

Copies of the server's ``twisted_dhm/peer/peer_pb2.py`` and ``twisted_dhm/api/kv_pb2*.py``
(tests check they are identical, but for the import line of ``kv_pb2_grpc``), so that the
client does not depend on the server package.
"""
