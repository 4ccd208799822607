"""Developer tooling: the local stack (`kubeft dev`), used by the demo and the tests."""
