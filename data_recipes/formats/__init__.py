"""Raw row → :class:`~data_recipes.messages.Conversation`, one module per input format.

``openai`` (``messages``), ``sharegpt`` (``conversations`` with ``from``/``value``) and ``hermes_fc``
(ShareGPT rows whose turns carry Hermes function-calling markup). :mod:`.detect` picks one per row.
"""
