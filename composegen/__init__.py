"""composegen: GPU-pinned Docker Compose stacks for self-hosted LLM services."""

__version__ = "0.1.0"
