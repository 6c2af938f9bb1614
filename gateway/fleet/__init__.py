"""The gateway's fleet layer: engine hosts, their health and load, and the request path to them.

Nothing here imports torch or the engine: a gateway in front of remote engines stays small.
"""
