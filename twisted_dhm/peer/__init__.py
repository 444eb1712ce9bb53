"""The native protocol: length-prefixed protobuf frames over TCP.

Handed its request handler by the composition root; never imports cluster/.
"""
