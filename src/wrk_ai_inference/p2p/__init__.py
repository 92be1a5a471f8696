"""The worker's one Holepunch process (the Node sidecar) and what talks to it: RPC, DHT
topics and Hyperdrive model drives."""
