// hvtrace session --publish: every session event and each session's finished transcript.txt and
// session.cast into a NATS JetStream stream (docs/publish.md). The caller's thread (hvtrace's
// event loop) only serializes and queues; one I/O thread publishes with acknowledgements
// (asynchronous publishes in batches, a batch retried whole until every message is acknowledged;
// Nats-Msg-Id makes a retry a no-op in the stream), and while the servers are unreachable or
// anything is already waiting, writes messages to the on-disk spool (bounded, in order), which it
// sends first once the servers are back — also in the next run with the same spool directory.
#pragma once

#include "publish/message.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace hvtrace::publish {

struct PublisherConfig {
  std::string urls;                       // nats://HOST:PORT[,nats://...]
  std::string stream = "HVTRACE";
  int replicas = 0;                       // 0: min(3, servers known to the client)
  std::int64_t max_age_s = 7 * 24 * 3600;
  std::int64_t max_bytes = 1LL << 30;
  std::string vm;                         // the VM's name (body field "vm", subject token)
  std::filesystem::path spool_dir;        // required
  std::uint64_t spool_max_bytes = 256ULL << 20;
  std::uint64_t queue_max_bytes = 64ULL << 20;   // in memory between the caller and the I/O thread
  std::size_t batch = 256;                // messages per acknowledged batch
  std::size_t chunk_bytes = kDefaultChunkBytes;
  int connect_timeout_ms = 3000;
  int ack_wait_ms = 5000;
};

struct PublisherStats {
  std::uint64_t events = 0;          // events handed to the publisher
  std::uint64_t file_chunks = 0;     // file chunk messages made
  std::uint64_t sent = 0;            // publish attempts (a retried batch counts again)
  std::uint64_t acked = 0;           // messages acknowledged by the stream (each once)
  std::uint64_t duplicates = 0;      // of those, acknowledged as duplicates (already stored)
  std::uint64_t spooled = 0;         // messages written to the on-disk spool
  std::uint64_t dropped = 0;         // lost: spool (or queue) full, or unreadable file
  std::uint64_t retries = 0;         // batches retried
  std::uint64_t spool_records = 0, spool_bytes = 0;   // in the spool now
  std::uint64_t spool_restored = 0;  // records found in the spool at start (a previous run's)
  bool connected = false;
  int replicas = 0;
};

class Publisher {
 public:
  // Validates the URL, connects, creates the stream if absent, opens the spool, starts the I/O
  // thread. Throws UserError (malformed or unreachable URL, no JetStream, bad spool).
  explicit Publisher(PublisherConfig cfg);
  ~Publisher();   // close(0) if not closed
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // An events.jsonl object (TrackerConfig::on_event). Never blocks on the network.
  void event(const nlohmann::json& e);
  // A session's finished file (TrackerConfig::on_closed): read and chunked by the I/O thread.
  void file(const std::string& sid, const std::string& name, const std::filesystem::path& path);
  // A session is over: its sequence counter is dropped.
  void session_closed(const std::string& sid);

  [[nodiscard]] PublisherStats stats() const;
  // Stops: publishes what is queued for up to `flush`, spools the rest, stops the thread.
  PublisherStats close(std::chrono::milliseconds flush);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One line for a summary: "published: N events, ... acked ...".
std::string summary(const PublisherStats& s);

}  // namespace hvtrace::publish
