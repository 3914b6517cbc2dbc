"""Running stacks on a Docker engine: compose file loading, up, down, status, health."""
