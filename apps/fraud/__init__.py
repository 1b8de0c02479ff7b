"""Fraud app: card transactions scored by an LSTM + graph attention model, in batches and streams.

Rooms: ``data`` (handbook and transaction-file loaders), ``amlsim`` (AMLSim account graph),
``simulate`` (the project's own transactions), ``features`` (the one feature engine), ``batch``
(the engine over a DataFrame), ``graph`` (day graphs from the engine's state), ``model``,
``train``, ``evaluate`` (handbook protocol, baselines), ``service`` (batch and streaming scorer),
``alerts`` (case queue), ``explain``, ``api``, ``ui``, ``cli`` (``fathom fraud``).
"""
