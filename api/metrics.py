"""Prometheus metrics of one app (its own CollectorRegistry, so apps and tests never share counters)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine import EngineStats, RequestOutput

__all__ = ["CONTENT_TYPE_LATEST", "GenerationTracker", "ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_ACCEPT_BUCKETS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0)


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "fastcodellama_"
        self.requests = Counter(p + "http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter(p + "generation_tokens", "Tokens generated (all samples)", registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "From request arrival to a prompt's first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(p + "time_per_output_token_seconds",
                              "Per finished sample: (last token time - first token time) / (tokens - 1)",
                              buckets=_TOKEN_TIME_BUCKETS, registry=r)
        self.accepted_length = Histogram(p + "spec_accepted_draft_length",
                                         "Per finished sample: draft tokens accepted per verification step",
                                         buckets=_ACCEPT_BUCKETS, registry=r)
        self.drafted = Counter(p + "spec_draft_tokens", "Draft tokens proposed, by source", ["source"], registry=r)
        self.accepted = Counter(p + "spec_accepted_tokens", "Draft tokens accepted, by source", ["source"],
                                registry=r)
        self.kv_blocks_used = Gauge(p + "kv_blocks_in_use", "KV cache blocks in use", registry=r)
        self.kv_blocks_total = Gauge(p + "kv_blocks_total", "KV cache blocks", registry=r)
        self.running = Gauge(p + "running_sequences", "Sequences the engine is running", registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Sequences waiting for the engine", registry=r)
        self.in_flight = Gauge(p + "in_flight_sequences", "Sequences admitted by the server, not finished",
                               registry=r)
        # Per client (an API key's hash or an address; past the label cap, "other").
        self.client_requests = Counter(p + "client_requests", "Completion requests by client and status code",
                                       ["client", "status"], registry=r)
        self.client_prompt_tokens = Counter(p + "client_prompt_tokens", "Prompt tokens of admitted requests",
                                            ["client"], registry=r)
        self.client_generated_tokens = Counter(p + "client_generation_tokens", "Tokens generated", ["client"],
                                               registry=r)
        self.client_in_flight = Gauge(p + "client_in_flight_sequences", "Sequences admitted, not finished",
                                      ["client"], registry=r)
        self.open_connections = Gauge(p + "open_connections", "Client connections open", registry=r)
        self.connection_events = Counter(
            p + "connection_events", "Connections refused (refused_server, refused_peer), closed while idle "
            "to make room (evicted_idle), or closed for sending no request headers in time (header_timeout)",
            ["event"], registry=r)

    def render(self, stats: EngineStats, in_flight: int, by_client: dict[str, int] | None = None,
               open_connections: int = 0) -> bytes:
        """`by_client`: sequences in flight per client label."""
        self.client_in_flight.clear()
        for label, seqs in (by_client or {}).items():
            self.client_in_flight.labels(label).set(seqs)
        self.open_connections.set(open_connections)
        self.kv_blocks_total.set(stats.num_blocks_total)
        self.kv_blocks_used.set(stats.num_blocks_total - stats.num_blocks_free)
        self.running.set(stats.num_running)
        # The engine's own queue plus what the server admitted beyond what the engine runs.
        self.queue_depth.set(max(stats.num_waiting, in_flight - stats.num_running))
        self.in_flight.set(in_flight)
        return generate_latest(self.registry)


@dataclass
class _Sample:
    tokens: int = 0
    first: float | None = None
    last: float | None = None
    done: bool = False


class GenerationTracker:
    """Feeds one request's outputs into the metrics as they arrive (aborted requests count too)."""

    def __init__(self, metrics: ServerMetrics, arrival: float, client: str = "other") -> None:
        self.metrics = metrics
        self.arrival = arrival
        self._client_prompt = metrics.client_prompt_tokens.labels(client)
        self._client_generated = metrics.client_generated_tokens.labels(client)
        self._prompts: set[int] = set()
        self._first_token: set[int] = set()
        self._samples: dict[tuple[int, int], _Sample] = {}

    def observe(self, prompt_index: int, out: RequestOutput, now: float) -> None:
        m = self.metrics
        if prompt_index not in self._prompts:
            self._prompts.add(prompt_index)
            m.prompt_tokens.inc(len(out.prompt_token_ids))
            self._client_prompt.inc(len(out.prompt_token_ids))
        if prompt_index not in self._first_token and out.num_generated_tokens:
            self._first_token.add(prompt_index)
            m.ttft.observe(now - self.arrival)
        for c in out.outputs:
            s = self._samples.setdefault((prompt_index, c.index), _Sample())
            count = len(c.token_ids)
            if count > s.tokens:
                m.generated_tokens.inc(count - s.tokens)
                self._client_generated.inc(count - s.tokens)
                s.tokens = count
                s.first = s.first if s.first is not None else now
                s.last = now
            if c.finished and not s.done:
                s.done = True
                self._finish_sample(s, c.spec)

    def _finish_sample(self, s: _Sample, spec) -> None:
        m = self.metrics
        if s.tokens >= 2 and s.first is not None and s.last is not None:
            m.tpot.observe((s.last - s.first) / (s.tokens - 1))
        if spec.verify_steps:
            m.accepted_length.observe(spec.total_accepted / spec.verify_steps)
        for source, n in spec.drafted.items():
            m.drafted.labels(source).inc(n)
        for source, n in spec.accepted.items():
            m.accepted.labels(source).inc(n)
