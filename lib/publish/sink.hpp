// The collector's writer: messages from the stream back into the layout `hvtrace session -o`
// writes (DIR/<sid>/events.jsonl, transcript.txt, session.cast), idempotently, so that a message
// delivered again (after a collector crash, a NAK, a server failover) never duplicates a line.
//
// events: DIR/<sid>/.events.idx holds the Hvtrace-Seq of every line of events.jsonl (u64 little
//   endian each, written before the line). A seq already there is a duplicate. A seq beyond the
//   highest written + 1 waits for the earlier ones (the caller NAKs it) until it has been delivered
//   `gap_deliveries` times (then it is written: the earlier ones were lost, e.g. a full spool).
//   Opening a session repairs a crash between the two writes (both cut to the lines they share).
// files: chunks are appended to DIR/<sid>/.<name>.part at their Hvtrace-Offset (an offset below
//   the part's size is a duplicate, above it waits), the final chunk renames it to DIR/<sid>/<name>.
// Several collectors (processes) may share DIR: each session is flock()ed while written.
// Not thread-safe.
#pragma once

#include "publish/message.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>

namespace hvtrace::publish {

class SessionSink {
 public:
  enum class Outcome { kWritten, kDuplicate, kWait, kRejected };
  struct Result {
    Outcome outcome = Outcome::kRejected;
    std::string why;   // kRejected / kWait: what is wrong or awaited
  };
  struct Stats {
    std::uint64_t events = 0, duplicates = 0, waits = 0, rejected = 0, chunks = 0, files = 0, gaps = 0;
    std::set<std::string> sessions;
  };

  explicit SessionSink(std::filesystem::path dir, std::uint64_t gap_deliveries = 20);
  ~SessionSink();
  SessionSink(const SessionSink&) = delete;
  SessionSink& operator=(const SessionSink&) = delete;

  // `delivered`: how many times the server has delivered this message (1 the first time).
  Result handle(const Message& m, std::uint64_t delivered = 1);
  // Everything written so far is on disk (fdatasync) — call before acknowledging.
  void flush();
  [[nodiscard]] const Stats& stats() const { return stats_; }

 private:
  struct Session;
  Session& open(const std::string& sid);
  Result event(Session& s, const Message& m, std::uint64_t delivered);
  Result file(Session& s, const Message& m, std::uint64_t delivered);

  std::filesystem::path dir_;
  std::uint64_t gap_deliveries_;
  std::map<std::string, std::unique_ptr<Session>> open_;
  std::set<Session*> dirty_;
  Stats stats_;
};

}  // namespace hvtrace::publish
