"""One request to an OpenAI-compatible endpoint before any shard: is a server there, and
does it take the key? (The prompt stage's setup asks; see ``PromptStage._probe``; it imports
this module only for the LLM backend, so openai stays optional.)"""

from __future__ import annotations

import openai

__all__ = ["probe_endpoint"]


def probe_endpoint(base_url: str, api_key: str, timeout_s: float) -> str | None:
    """Ask the endpoint once for its model list: ``None`` when a server answers (any HTTP
    status but 401/403: some servers have no /models route), else why it cannot be used."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
    try:
        client.models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        return f"the LLM endpoint {base_url} refused the API key (HTTP {exc.status_code})"
    except openai.APIStatusError:
        return None
    except openai.APITimeoutError:
        return f"the LLM endpoint {base_url} did not answer within {timeout_s:g} s"
    except openai.APIConnectionError as exc:
        return f"cannot reach the LLM endpoint {base_url} ({exc.__cause__ or exc})"
    finally:
        client.close()
    return None
