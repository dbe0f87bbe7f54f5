"""The OpenAPI 3.1 document of the server, generated from the pydantic schemas (GET /openapi.json)."""
from __future__ import annotations

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.chat_schemas import ChatChunk, ChatRequest, ChatResponse
from api.infill_schemas import InfillRequest, InfillResponse
from api.ollama_schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaModelRequest
from api.anthropic_schemas import AnthropicCount, AnthropicRequest
from api.responses_schemas import ResponsesRequest
from api.tokenize_schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from api.schemas import (CompletionRequest, CompletionResponse, CopilotToken, CopilotUser, ErrorResponse, FimRequest,
                         Health, ModelList)

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict:
    return {str(s): _json(ErrorResponse, "Error") for s in statuses}


def _generating(body: type[BaseModel], answer: type[BaseModel], description: str) -> dict:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {
            "200": {"description": description,
                    "content": {"application/json": {"schema": _ref(answer)},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 404, 408, 413, 429, 500, 503),
        },
    }


def _plain(body: type[BaseModel], answer: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {"200": _json(answer, "The answer"), **_errors(400, 401, 404, 413)}}


def _ollama(body: type[BaseModel]) -> dict:
    """Ollama's endpoints answer in its own shapes: one JSON object, or one per line while streaming."""
    return _foreign(body, "One object, or (stream, the default) one per line, done true last", "application/x-ndjson",
                    '{"error": "message"}')


def _foreign(body: type[BaseModel], answer: str, stream_type: str = "text/event-stream",
             error: str = '{"type": "error", "error": {"type", "message"}}') -> dict:
    """An endpoint of another API (Ollama's, Anthropic's): its answers and errors in that API's shapes."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {"200": {"description": answer, "content": {"application/json": {}, stream_type: {}}},
                          "4XX": {"description": error}}}


def build_openapi(title: str, version: str, auth: bool) -> dict:
    models = [(CompletionRequest, "validation"), (CompletionResponse, "serialization"),
              (ChatRequest, "validation"), (ChatResponse, "serialization"), (ChatChunk, "serialization"),
              (FimRequest, "validation"), (InfillRequest, "validation"), (InfillResponse, "serialization"),
              (ModelList, "serialization"), (Health, "serialization"), (CopilotToken, "serialization"),
              (CopilotUser, "serialization"),
              (TokenizeRequest, "validation"), (TokenizeResponse, "serialization"),
              (DetokenizeRequest, "validation"), (DetokenizeResponse, "serialization"),
              (ErrorResponse, "serialization"), (OllamaGenerateRequest, "validation"),
              (OllamaChatRequest, "validation"), (OllamaModelRequest, "validation"),
              (AnthropicRequest, "validation"), (AnthropicCount, "validation")]
    _, defs = models_json_schema(models, ref_template=_REF)
    completion = _generating(CompletionRequest, CompletionResponse,
                             "A completion, or with stream=true server-sent events: `data: {chunk}` per chunk "
                             "(a CompletionResponse), `data: [DONE]` last")
    chat = _generating(ChatRequest, ChatResponse, "A chat completion, or with stream=true server-sent events: "
                       "`data: {chunk}` per chunk (a ChatChunk), `data: [DONE]` last")
    fim = _generating(FimRequest, ChatResponse, "Answered as a chat completion (streamed: ChatChunk events, "
                      "`data: [DONE]` last)")
    infill = _generating(InfillRequest, InfillResponse, "llama.cpp's answer, or with stream=true server-sent "
                         "events `data: {content, stop: false}` and last the whole answer (no [DONE])")
    paths = {
        "/v1/completions": {"post": {"summary": "OpenAI text completion (fill-in-the-middle with suffix)",
                                     "operationId": "createCompletion", **completion}},
        "/v1/engines/{engine}/completions": {"post": {
            "summary": "Copilot / FauxPilot completion; engine is the served model name",
            "operationId": "createEngineCompletion",
            "parameters": [{"name": "engine", "in": "path", "required": True, "schema": {"type": "string"}}],
            **completion}},
        "/v1/chat/completions": {"post": {"summary": "OpenAI chat completion, through the model's chat template",
                                          "operationId": "createChatCompletion", **chat}},
        "/v1/fim/completions": {"post": {"summary": "Mistral's fill-in-the-middle API (prompt + suffix)",
                                         "operationId": "createFimCompletion", **fim}},
        "/infill": {"post": {"summary": "llama.cpp's infill (llama.vscode, llama.vim)", "operationId": "infill",
                             **infill}},
        "/tokenize": {"post": {"summary": "The served model's token ids of a text or a chat (vLLM's and llama.cpp's "
                                          "fields)", "operationId": "tokenize",
                               **_plain(TokenizeRequest, TokenizeResponse)}},
        "/detokenize": {"post": {"summary": "The text of token ids", "operationId": "detokenize",
                                 **_plain(DetokenizeRequest, DetokenizeResponse)}},
        "/v1/models": {"get": {"summary": "The served model", "operationId": "listModels",
                               "responses": {"200": _json(ModelList, "Models"), **_errors(401)}}},
        "/health": {"get": {"summary": "Liveness and KV cache state (no API key needed)", "operationId": "health",
                            "security": [],
                            "responses": {"200": _json(Health, "Serving"), "503": _json(Health, "Shutting down")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(401)}}},
        "/copilot_internal/v2/token": {"get": {"summary": "Copilot session token", "operationId": "copilotToken",
                                               "responses": {"200": _json(CopilotToken, "Token"), **_errors(401)}}},
        "/copilot_internal/user": {"get": {"summary": "Copilot's signed-in user", "operationId": "copilotUser",
                                           "responses": {"200": _json(CopilotUser, "User"), **_errors(401)}}},
        "/api/generate": {"post": {"summary": "Ollama's generate (raw, suffix, context; options)",
                                   "operationId": "ollamaGenerate", **_ollama(OllamaGenerateRequest)}},
        "/api/chat": {"post": {"summary": "Ollama's chat (tools: calls with object arguments)",
                               "operationId": "ollamaChat", **_ollama(OllamaChatRequest)}},
        "/api/show": {"post": {"summary": "Ollama's model details: template (.Suffix where it infills), num_ctx, "
                                          "capabilities", "operationId": "ollamaShow", **_ollama(OllamaModelRequest)}},
        "/api/tags": {"get": {"summary": "Ollama's model list: the served names", "operationId": "ollamaTags",
                              "responses": {"200": {"description": "{models: [...]}"}}}},
        "/v1/messages": {"post": {"summary": "Anthropic's Messages API (Claude Code): tool_use blocks, streamed "
                                             "events", "operationId": "anthropicMessages",
                                  **_foreign(AnthropicRequest, "A message, or with stream=true its events")}},
        "/v1/messages/count_tokens": {"post": {"summary": "Anthropic's token count of a conversation",
                                               "operationId": "anthropicCountTokens",
                                               **_foreign(AnthropicCount, "{input_tokens}")}},
        "/v1/responses": {"post": {"summary": "OpenAI's Responses API (the Codex CLI): function_call items, "
                                              "streamed events", "operationId": "responses",
                                   **_foreign(ResponsesRequest, "A response, or with stream=true its events")}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": {"description": "OpenAPI document"}}}},
    }
    doc = {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
           "components": {"schemas": defs.get("$defs", {})}}
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
