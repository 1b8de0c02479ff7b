"""Chat models behind the assistant's answers: an OpenAI-compatible endpoint or a local Hugging Face LLM.

``LLMConfig.backend`` picks one:

- ``extractive`` (default): no LLM; ``make_answerer`` returns the grounded ``ExtractiveAnswerer``.
- ``openai``: ``langchain_openai.ChatOpenAI`` against any OpenAI-compatible endpoint (vLLM, Ollama,
  DeepSeek, OpenAI). ``base_url`` includes the version path (``http://localhost:8000/v1``); the key
  comes from ``api_key`` or the environment variable ``api_key_env`` (local servers need none).
  A failed call raises ``LLMEndpointError`` naming the endpoint's URL.
- ``hf``: a local transformers causal-LM folder (never the hub), whose MoE blocks are replaced by
  Fathom's (``core.moe.hf.patch_model``), wrapped as the langchain-core chat model ``HFChatModel``
  (the tokenizer's chat template, greedy decoding).

>>> config = LLMConfig(backend="openai", base_url="http://localhost:11434/v1", model="qwen3:8b")
>>> answerer = make_answerer(config)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from apps.customer_service.answer import Answerer, LLMAnswerer
from apps.customer_service.extractive import ExtractiveAnswerer
from core.config import ConfigMixin
from core.retrieval.embeddings import Embedder

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "HFChatModel",
    "LLMConfig",
    "LLMEndpointError",
    "load_hf_chat_model",
    "make_answerer",
    "make_chat_model",
]

BACKENDS = ("extractive", "openai", "hf")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MOE_BACKENDS = ("auto", "triton", "torch")
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


@dataclass
class LLMConfig(ConfigMixin):
    """Which answer backend to use and how to reach its model.

    Args:
        backend: ``extractive``, ``openai`` or ``hf``.
        base_url: OpenAI-compatible endpoint including the version path (``http://host:8000/v1``);
            ``None``: OpenAI's own API.
        model: the model name the endpoint serves (required for ``openai``).
        api_key: the endpoint's key; ``None``: read ``api_key_env`` (no key at all is allowed: local
            servers need none).
        api_key_env: environment variable holding the key.
        temperature: sampling temperature of the endpoint (``hf`` always decodes greedily).
        max_tokens: most tokens in one reply.
        timeout: seconds to wait for one endpoint call.
        max_retries: retries of a failed endpoint call.
        hf_model_path: local Hugging Face causal-LM folder (required for ``hf``).
        device: torch device of the ``hf`` model; ``None``: CUDA when available, else CPU.
        dtype: weight dtype of the ``hf`` model (``auto``: as saved).
        moe_backend: path of the patched MoE blocks (``auto``: Triton on CUDA, else torch).
        patch_moe: replace the ``hf`` model's MoE blocks with Fathom's.

    Raises:
        ValueError: a field is out of range or the backend lacks what it needs.
    """

    yaml_section: ClassVar[str] = "llm"

    backend: str = "extractive"
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 60.0
    max_retries: int = 2
    hf_model_path: str | None = None
    device: str | None = None
    dtype: str = "auto"
    moe_backend: str = "auto"
    patch_moe: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"LLMConfig.backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if isinstance(self.temperature, bool) or not 0.0 <= float(self.temperature) <= 2.0:
            raise ValueError(f"LLMConfig.temperature must be in [0, 2], got {self.temperature!r}")
        for name, low in (("max_tokens", 1), ("max_retries", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"LLMConfig.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.timeout, bool) or not float(self.timeout) > 0:
            raise ValueError(f"LLMConfig.timeout must be > 0 seconds, got {self.timeout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"LLMConfig.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.moe_backend not in MOE_BACKENDS:
            raise ValueError(
                f"LLMConfig.moe_backend must be one of {', '.join(MOE_BACKENDS)}; got {self.moe_backend!r}"
            )
        if self.base_url is not None:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"LLMConfig.base_url must be an http(s) URL such as http://localhost:8000/v1, "
                    f"got {self.base_url!r}"
                )
        if self.backend == "openai" and not (isinstance(self.model, str) and self.model.strip()):
            raise ValueError(
                "LLMConfig.model is required for the openai backend (the name the endpoint serves)"
            )
        if self.backend == "hf" and not self.hf_model_path:
            raise ValueError("LLMConfig.hf_model_path is required for the hf backend (a local model folder)")

    @property
    def endpoint(self) -> str:
        """The endpoint's base URL (OpenAI's own when ``base_url`` is unset)."""
        return (self.base_url or OPENAI_DEFAULT_URL).rstrip("/")

    def resolved_api_key(self) -> str | None:
        """``api_key``, else the value of the environment variable ``api_key_env``, else ``None``."""
        return self.api_key or os.environ.get(self.api_key_env) or None


# -- OpenAI-compatible endpoint --------------------------------------------------------------------------
class LLMEndpointError(RuntimeError):
    """An OpenAI-compatible endpoint could not be reached or refused the request.

    Args:
        message: what went wrong, naming the endpoint's URL.
        url: the endpoint's base URL.
        status: the HTTP status, when the endpoint answered.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def _endpoint_error(chat: Any, err: Exception) -> LLMEndpointError:
    import openai

    url = str(chat.openai_api_base or OPENAI_DEFAULT_URL).rstrip("/")
    if isinstance(err, openai.APITimeoutError):
        return LLMEndpointError(
            f"the LLM endpoint {url} did not answer within {chat.request_timeout} s", url=url
        )
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err
        return LLMEndpointError(
            f"cannot reach the LLM endpoint {url} ({type(cause).__name__}: {cause}); is the server running "
            "and is base_url right?",
            url=url,
        )
    status = getattr(err, "status_code", None)
    hint = {
        401: "; check the API key (LLMConfig.api_key or its api_key_env variable)",
        403: "; check the API key's permissions",
        404: f"; check the model name {chat.model_name!r} and that base_url ends with the version path (/v1)",
    }.get(status or 0, "")
    message = getattr(err, "message", None) or str(err)
    return LLMEndpointError(
        f"the LLM endpoint {url} answered HTTP {status}: {message}{hint}", url=url, status=status
    )


@functools.cache
def _openai_chat_class() -> Any:
    """``ChatOpenAI`` whose errors name the endpoint (subclassed lazily: langchain-openai loads on demand)."""
    import openai
    from langchain_openai import ChatOpenAI

    class EndpointChatOpenAI(ChatOpenAI):
        """``ChatOpenAI`` that raises ``LLMEndpointError`` (naming the URL) when a call fails.

        Off OpenAI's own API the reply limit goes out as ``max_tokens``: ChatOpenAI sends only the newer
        ``max_completion_tokens``, which not every OpenAI-compatible server reads.
        """

        def _get_request_payload(self, *args: Any, **kwargs: Any) -> dict:
            payload = super()._get_request_payload(*args, **kwargs)
            host = urlsplit(str(self.openai_api_base or OPENAI_DEFAULT_URL)).hostname or ""
            if host != "api.openai.com" and "max_completion_tokens" in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
            return payload

        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            try:
                return super()._generate(*args, **kwargs)
            except openai.APIError as err:
                raise _endpoint_error(self, err) from err

        async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
            try:
                return await super()._agenerate(*args, **kwargs)
            except openai.APIError as err:
                raise _endpoint_error(self, err) from err

        def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from super()._stream(*args, **kwargs)
            except openai.APIError as err:
                raise _endpoint_error(self, err) from err

        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for chunk in super()._astream(*args, **kwargs):
                    yield chunk
            except openai.APIError as err:
                raise _endpoint_error(self, err) from err

    return EndpointChatOpenAI


def _openai_chat_model(config: LLMConfig) -> BaseChatModel:
    key = config.resolved_api_key()
    if key is None:
        log.info(
            "no API key in LLMConfig.api_key or $%s: calling %s without one",
            config.api_key_env,
            config.endpoint,
        )
    return _openai_chat_class()(
        model=config.model,
        base_url=config.endpoint,
        # The client insists on a key; servers without auth (vLLM, Ollama) ignore this placeholder.
        api_key=key or "EMPTY",
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        timeout=config.timeout,
        max_retries=config.max_retries,
    )


# -- local Hugging Face model ----------------------------------------------------------------------------
_ROLE_OF = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}


def _chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    chat: list[dict[str, str]] = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else None
        for cls, name in _ROLE_OF.items():
            if role is None and isinstance(message, cls):
                role = name
        if role is None:
            raise ValueError(
                f"HFChatModel cannot send a {type(message).__name__} (system, human and AI only)"
            )
        chat.append({"role": role, "content": message.text})
    return chat


def _merge_system(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    """For chat templates without a system role: the system text goes first in the first user turn."""
    system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
    rest = [dict(m) for m in chat if m["role"] != "system"]
    if system:
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        else:
            rest.insert(0, {"role": "user", "content": system})
    return rest


class HFChatModel(BaseChatModel):
    """A local transformers causal LM as a langchain-core chat model: chat template, greedy decoding.

    Args:
        model: a loaded ``PreTrainedModel`` with ``generate`` (see ``load_hf_chat_model``).
        tokenizer: its tokenizer, with a chat template.
        max_new_tokens: most tokens generated per reply.
        model_path: where the model came from (for logs and ``_identifying_params``).

    Calls are serialised by a lock: one model answers one prompt at a time.
    """

    model: Any
    tokenizer: Any
    max_new_tokens: int = 512
    model_path: str = ""
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "fathom-hf"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "max_new_tokens": self.max_new_tokens}

    def _encode(self, chat: list[dict[str, str]]) -> Any:
        try:
            return self.tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except Exception as err:  # jinja2's TemplateError: e.g. "System role not supported"
            if not any(m["role"] == "system" for m in chat):
                raise ValueError(
                    f"the chat template of {self.model_path or 'the model'} failed: {err}"
                ) from err
            log.info(
                "chat template of %s rejects a system turn (%s): merging it into the user turn",
                self.model_path,
                err,
            )
            return self.tokenizer.apply_chat_template(
                _merge_system(chat), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        encoded = self._encode(_chat_messages(messages))
        device = next(self.model.parameters()).device
        input_ids = encoded["input_ids"].to(device)  # (1, T)
        attention_mask = encoded.get("attention_mask")
        attention_mask = (
            attention_mask.to(device) if attention_mask is not None else torch.ones_like(input_ids)
        )
        max_new = int(kwargs.get("max_new_tokens", self.max_new_tokens))
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] + max_new > limit:
            raise ValueError(
                f"the prompt is {input_ids.shape[1]} tokens and {max_new} new tokens are asked, but "
                f"{self.model_path or 'the model'} takes at most {limit}; retrieve fewer passages"
            )
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=pad,
            )  # (1, T + new)
        text = self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        new_tokens = int(output.shape[1] - input_ids.shape[1])
        message = AIMessage(
            content=text.strip(),
            response_metadata={"model_path": self.model_path, "prompt_tokens": int(input_ids.shape[1])},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output={"new_tokens": new_tokens}
        )


def load_hf_chat_model(config: LLMConfig) -> HFChatModel:
    """Load a local Hugging Face causal LM and tokenizer, patch its MoE blocks, wrap it as a chat model.

    Only local files are read (``local_files_only``, safetensors weights only); nothing is downloaded.

    Args:
        config: an ``hf`` config (``hf_model_path``, ``device``, ``dtype``, ``moe_backend``,
            ``patch_moe``, ``max_tokens``).

    Returns:
        The chat model; ``chat.model`` is the (patched) transformers model.

    Raises:
        FileNotFoundError: the folder does not exist or holds no ``config.json``.
        ValueError: the folder holds no loadable model or tokenizer, the tokenizer has no chat template,
            or a MoE block cannot be patched.
    """
    if not config.hf_model_path:
        raise ValueError("LLMConfig.hf_model_path is required for the hf backend (a local model folder)")
    path = Path(config.hf_model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"local model folder {str(path)!r} does not exist (the hf backend loads a folder saved with "
            "save_pretrained; models are never downloaded)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a Hugging Face model folder (no config.json)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.moe.hf import adapters, patch_model

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"no usable tokenizer in {path}: {str(err).splitlines()[0]}") from err
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer in {path} has no chat template; set chat_template in tokenizer_config.json"
        )
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype: Any = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=dtype
        )
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load a causal LM from {path}: {str(err).splitlines()[0]}") from err
    model.to(torch.device(device)).eval()
    moe_classes = tuple(adapter.block_cls for adapter in adapters().values())
    if config.patch_moe and any(type(m) in moe_classes for m in model.modules()):
        names = patch_model(model, backend=config.moe_backend)  # type: ignore[arg-type]
        log.info("%s: %d MoE blocks on Fathom's layer (%s)", path.name, len(names), config.moe_backend)
    elif config.patch_moe:
        log.info("%s holds no supported MoE block: it runs unpatched", path.name)
    return HFChatModel(
        model=model, tokenizer=tokenizer, max_new_tokens=config.max_tokens, model_path=str(path)
    )


# -- factories -------------------------------------------------------------------------------------------
def make_chat_model(config: LLMConfig) -> BaseChatModel:
    """The langchain-core chat model of an ``openai`` or ``hf`` config.

    Args:
        config: the LLM configuration.

    Returns:
        ``ChatOpenAI`` (a subclass whose errors name the endpoint) or ``HFChatModel``.

    Raises:
        ValueError: the backend is ``extractive`` (it has no chat model) or unknown.
        FileNotFoundError, ValueError: see ``load_hf_chat_model``.
    """
    if not isinstance(config, LLMConfig):
        raise TypeError(f"make_chat_model takes an LLMConfig, got {type(config).__name__}")
    if config.backend == "openai":
        return _openai_chat_model(config)
    if config.backend == "hf":
        return load_hf_chat_model(config)
    if config.backend == "extractive":
        raise ValueError("the extractive backend has no chat model; call make_answerer instead")
    raise ValueError(f"unknown LLM backend {config.backend!r}; use one of {', '.join(BACKENDS)}")


def make_answerer(
    config: LLMConfig | None = None, embedder: Embedder | None = None, *, chat_model: Any = None
) -> Answerer:
    """The answer backend of ``config``: ``ExtractiveAnswerer`` or an ``LLMAnswerer`` over its chat model.

    Args:
        config: the LLM configuration; ``None``: the extractive default.
        embedder: the embedder the extractive answerer shares (e.g. the retriever's).
        chat_model: an already built chat model of ``config`` to reuse (e.g. the one that also condenses
            follow-ups); ``None``: ``make_chat_model(config)``. Ignored by the extractive backend.

    Returns:
        An ``Answerer``.

    Raises:
        ValueError, FileNotFoundError: see ``make_chat_model``.
    """
    config = config if config is not None else LLMConfig()
    if not isinstance(config, LLMConfig):
        raise TypeError(f"make_answerer takes an LLMConfig, got {type(config).__name__}")
    if config.backend == "extractive":
        return ExtractiveAnswerer(embedder)
    return LLMAnswerer(
        chat_model if chat_model is not None else make_chat_model(config), backend=config.backend
    )
