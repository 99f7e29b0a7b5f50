"""privacy-bench test plugin: importing a submodule registers its method."""
