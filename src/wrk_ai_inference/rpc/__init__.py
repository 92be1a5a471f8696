"""Rack worker mode: the core behind Hyperswarm RPC, through a Node bridge process."""
