"""The pure core: no I/O, no clock, no randomness, no asyncio.

Everything here is a function of its arguments, so it can be unit- and property-tested
and replayed. Adapters live in :mod:`shoal.infra`.
"""
