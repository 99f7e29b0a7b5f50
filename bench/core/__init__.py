"""The harness core that methods are written against: the API types, the registry, typed
configs, errors, the content-addressed cache and the run store. Imports nothing else of the project."""
