"""ragft pipeline: configuration, data, models, knowledge base, retrieval, generation, engines.

    from pipeline import build_chat_engine, build_query_engine, load_config
    engine = build_query_engine(load_config(), system="full")
    chat = build_chat_engine(load_config(), system="full")     # a conversation: follow-ups are condensed
"""

from __future__ import annotations

from pipeline.config import Config, ConfigError, load_config
from pipeline.version import __version__

__all__ = ["Config", "ConfigError", "load_config", "build_query_engine", "build_chat_engine", "Components", "SYSTEMS", "SYSTEM_NAMES", "__version__"]


def __getattr__(name: str):
    """The engine API loads on first use, so that importing pipeline.config (every CLI's first line) stays fast."""
    if name in ("build_query_engine", "Components"):
        from pipeline import engine

        return getattr(engine, name)
    if name == "build_chat_engine":
        from pipeline import chat

        return chat.build_chat_engine
    if name in ("SYSTEMS", "SYSTEM_NAMES"):
        from pipeline import systems

        return getattr(systems, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
