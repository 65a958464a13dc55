"""A tiny OpenAI-compatible chat server on 127.0.0.1 for the LLM backend tests.

``mode`` picks the behaviour of ``POST /v1/chat/completions``:

- ``good``: JSON ``{"description": ...}`` written by the grammar from the AUs in the prompt
- ``prose``: the same text without JSON (a server that ignores ``response_format``)
- ``garbage``: prose that names no AU at all
- ``refusal``: JSON carrying an apology instead of a description
- ``wrong``: JSON describing the wrong AUs (always a strong smile and a frown)
- ``fix_after_feedback``: ``wrong`` until the conversation carries read-back feedback
- ``500`` / ``429``: that HTTP status; ``fail_first`` > 0 fails only the first N requests
- ``stall``: sleeps ``stall_s`` before answering (past the client timeout)
- ``401``: every request, and ``GET /v1/models`` (the start-up probe), refused as unauthorised

``GET /v1/models`` answers an empty model list otherwise; it is not counted in ``requests``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from manifests.vocab import DISFA_AUS
from stages.prompt.grammar import describe

_ACTIVE = re.compile(r"AU(\d+) [^:;]+: \w+ \(level (\d)\)")


def grammar_reply(messages: list[dict[str, str]]) -> str:
    user = messages[1]["content"]
    levels = {int(a): int(v) for a, v in _ACTIVE.findall(user)}
    emotion = re.search(r"Emotion: (\w+)\.", user)
    vector = [levels.get(au, 0) for au in DISFA_AUS]
    return describe(vector, emotion.group(1) if emotion else "mixed", seed=len(user)).text


class StubLLM:
    def __init__(self) -> None:
        self.mode = "good"
        self.fail_first = 0
        self.stall_s = 1.0
        self.requests = 0
        self.auth_headers: set[str] = set()
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests += 1
                    n = stub.requests
                    stub.bodies.append(body)
                    stub.auth_headers.add(self.headers.get("Authorization", ""))
                status, content = stub.answer(body, n)
                if status == "stall":
                    time.sleep(stub.stall_s)
                    status = 200
                self.reply(int(status), content)

            def do_GET(self) -> None:
                if stub.mode == "401":
                    self.reply(401, "invalid api key")
                    return
                data = json.dumps({"object": "list", "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def reply(self, status: int, content: str) -> None:
                if status == 200:
                    payload = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "stub",
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                else:
                    payload = {"error": {"message": content, "type": "stub", "code": status}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # stalled handlers must not block shutdown
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reset(self, mode: str, fail_first: int = 0) -> None:
        with self._lock:
            self.mode, self.fail_first, self.requests = mode, fail_first, 0
            self.bodies.clear()
            self.auth_headers.clear()

    def answer(self, body: dict[str, Any], n: int) -> tuple[int | str, str]:
        messages = body["messages"]
        mode = self.mode
        if mode == "401":
            return 401, "invalid api key"
        if mode in ("500", "429"):
            if not self.fail_first or n <= self.fail_first:
                return int(mode), "stub failure"
            mode = "good"
        if mode == "stall":
            return "stall", json.dumps({"description": grammar_reply(messages)})
        if mode == "fix_after_feedback":
            mode = "good" if len(messages) > 2 else "wrong"
        if mode == "good":
            return 200, json.dumps({"description": grammar_reply(messages)})
        if mode == "prose":
            return 200, grammar_reply(messages)
        if mode == "garbage":
            return 200, "Lorem ipsum dolor sit amet <<>> 42"
        if mode == "refusal":
            return 200, json.dumps({"description": "I am sorry, but I cannot help with that request."})
        if mode == "wrong":
            return 200, json.dumps({"description": "A strong smile and a marked frown."})
        raise ValueError(mode)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
