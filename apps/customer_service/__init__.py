"""Customer-service application: answers a bank's customers from its knowledge base, with citations.

``KNOWLEDGE_BASE`` is the folder of Harbour Bank help-centre articles (Markdown with YAML front
matter: ``title``, ``category``, ``intents`` (BANKING77 labels), ``urgent``, ``updated``) that the
default assistant retrieves from.
"""

from pathlib import Path

KNOWLEDGE_BASE = Path(__file__).resolve().parent / "knowledge_base"
