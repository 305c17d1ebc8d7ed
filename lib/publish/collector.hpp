// hvtrace collect: a durable pull consumer on the hvtrace stream that writes every sensor's
// sessions into DIR in the layout `hvtrace session -o` uses (SessionSink). Messages are
// acknowledged only after what they wrote is on disk (fdatasync); a message delivered again is
// recognised on disk and not written twice. Collectors with the same durable name share the work
// (give them the same DIR: sessions are locked while written).
#pragma once

#include "publish/sink.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace hvtrace::publish {

struct CollectorConfig {
  std::string urls;
  std::filesystem::path dir;
  std::string stream = "HVTRACE";
  std::string durable = "hvtrace-collect";
  int batch = 256;
  int connect_timeout_ms = 3000;
  double idle_exit_s = 0;                       // > 0: stop after this long with nothing left for us in the stream
  std::function<bool()> stop;                   // polled between fetches (Ctrl-C)
  std::function<void(const std::string&)> log;  // progress lines
};

struct CollectorStats {
  std::uint64_t messages = 0, acked = 0, naked = 0, terminated = 0, fetch_errors = 0;
  SessionSink::Stats sink;
};

class Collector {
 public:
  // Connects, creates the stream if absent, binds the durable consumer. Throws UserError.
  explicit Collector(CollectorConfig cfg);
  ~Collector();
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;
  // Until cfg.stop(), or idle_exit_s without a message once the server holds nothing more for
  // this consumer (not yet delivered or unacknowledged; 60 s more if no server can say).
  CollectorStats run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string summary(const CollectorStats& s);

}  // namespace hvtrace::publish
