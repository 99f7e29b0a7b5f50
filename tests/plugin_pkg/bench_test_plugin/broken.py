"""A broken plugin module: importing it fails (the harness must only warn)."""

raise RuntimeError("spine test plugin: deliberately broken entry point")
