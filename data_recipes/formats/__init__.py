"""Raw row → :class:`~data_recipes.messages.Conversation`, one module per input format.

``openai`` (``messages``), ``sharegpt`` (``conversations`` with ``from``/``value``), ``hermes_fc``
(ShareGPT rows whose turns carry Hermes function-calling markup), ``toolace`` (ShareGPT rows with
ToolACE's tool list and Python-call syntax), ``prompt_completion`` (TRL) and ``alpaca``. Each reads a row into
OpenAI messages; :mod:`.detect` picks one per row, adds the top-level columns (:mod:`.columns`) and
validates. :mod:`.protocol` cuts an old tool protocol out of a system prompt.
"""
