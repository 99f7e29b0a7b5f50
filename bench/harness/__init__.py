"""The harness: suites, the runner, executors and release (de)serialisation. The only layer that
knows about caching, storage and parallelism; it never imports a method (methods arrive through the
registry)."""
