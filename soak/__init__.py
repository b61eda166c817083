"""The soak (issue 14): an hour of load with documents and eligibility, sampling the engine's
memory, descriptors, connections, backlog and ACK latency; ``python -m soak``."""
