pytest_plugins = ["agoramesh.testing.plugin"]
