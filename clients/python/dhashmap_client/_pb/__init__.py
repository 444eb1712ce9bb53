"""Code generated from proto/dhashmap/v1/peer.proto by `make proto`; do not edit.

A copy of the server's ``twisted_dhm/peer/peer_pb2.py`` (a test checks they are
identical), so that the client does not depend on the server package.
"""
