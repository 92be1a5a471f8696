"""Rack worker mode: the core behind Hyperswarm RPC, through the Node sidecar."""
