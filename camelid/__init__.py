"""camelid: base LLM → your domain, Chinese-capable chat model → served."""

__version__ = "0.1.0"
