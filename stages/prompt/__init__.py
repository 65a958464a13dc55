"""Prompt expansion: planned AU intensities -> a checked text description.

- :mod:`stages.prompt.grammar`: embedded, seeded grammar (default backend, no network)
- :mod:`stages.prompt.readback`: description -> AUs and levels; ``check_description``
- :mod:`stages.prompt.llm`: any OpenAI-compatible endpoint, cached, retried, checked back
- :mod:`stages.prompt.stage`: ``PromptStage``, registered as ``"prompt"``

Importing this package imports nothing heavy (``openai`` only loads inside the LLM path).
"""

__all__: list[str] = []
