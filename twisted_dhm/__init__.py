"""dhashmap: a Dynamo-style distributed key-value store on Twisted."""

__version__ = "0.1.0"
