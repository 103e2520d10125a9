"""Whether the native extension (``native/``, Rust, the module ``poller._fastpath``) is built.

It reads listings, builds events, writes Kafka record batches and partitions keys. Installed
without a Rust toolchain, the package leaves it out and the Python paths do all of that:
slower, with the same events.
"""

try:
    from poller import _fastpath  # noqa: F401  (imported to learn that it loads)
except ImportError:
    NATIVE = False
else:
    NATIVE = True
