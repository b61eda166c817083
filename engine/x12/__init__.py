"""X12 005010: envelopes, the 270 builder and the 271 reader."""
