// Shared nats.c plumbing of the publisher and the collector (internal to lib/publish).
#pragma once

#include <nats/nats.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hvtrace::publish {

struct StreamSettings {
  std::string name = "HVTRACE";
  int replicas = 0;                            // 0: min(3, servers the client knows of)
  std::int64_t max_age_s = 7 * 24 * 3600;      // limits retention: messages older than this go
  std::int64_t max_bytes = 1LL << 30;          // ... and the oldest go beyond this (-1: no limit)
  std::int64_t duplicate_window_s = 600;       // JetStream de-duplication window
};

// Connects to the first reachable URL (the others and the cluster's discovered servers are
// failover targets; reconnects forever). Throws UserError when none is reachable.
natsConnection* connect(const std::vector<std::string>& urls, const std::string& name, int timeout_ms);
// Creates the stream (subjects hvtrace.>) if absent, waiting up to `wait_ms` for a cluster that
// is still electing its leaders; throws UserError otherwise. Returns the stream's replicas.
int ensure_stream(jsCtx* js, natsConnection* nc, const StreamSettings& s, int wait_ms);
std::string status_text(natsStatus s);

}  // namespace hvtrace::publish
