// What hvtrace publishes to NATS JetStream, independent of the client library: subjects (with
// sensor and VM names made safe as subject tokens), messages with headers and de-duplication ids,
// NATS URL lists, and the chunking of a session's finished files. docs/publish.md is the format.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hvtrace::publish {

// Header names (NATS headers, as HTTP's).
inline constexpr const char* kMsgIdHeader = "Nats-Msg-Id";          // JetStream de-duplication id
inline constexpr const char* kKindHeader = "Hvtrace-Kind";          // "event" or "file"
inline constexpr const char* kSessionHeader = "Hvtrace-Session";    // the session id
inline constexpr const char* kSeqHeader = "Hvtrace-Seq";            // event: 1, 2, ... per session
inline constexpr const char* kFileHeader = "Hvtrace-File";          // file: transcript.txt or session.cast
inline constexpr const char* kChunkHeader = "Hvtrace-Chunk";        // file: 0, 1, ...
inline constexpr const char* kOffsetHeader = "Hvtrace-Offset";      // file: byte offset of this chunk
inline constexpr const char* kLastHeader = "Hvtrace-Last";          // file: "1" on the final chunk
inline constexpr const char* kSizeHeader = "Hvtrace-Size";          // file: total size (final chunk)

inline constexpr std::size_t kMaxTokenBytes = 64;
inline constexpr std::size_t kDefaultChunkBytes = 256 << 10;   // well under nats-server's 1 MiB max_payload

struct Message {
  std::string subject;
  std::vector<std::pair<std::string, std::string>> headers;   // includes Nats-Msg-Id
  std::string data;
  [[nodiscard]] const std::string* header(std::string_view key) const;
  [[nodiscard]] std::string msg_id() const;
  [[nodiscard]] std::size_t bytes() const;
};

// A subject token from any string: '.', '*', '>', whitespace, control and non-ASCII bytes become
// '_', cut at kMaxTokenBytes; "" becomes "_".
std::string sanitize_token(std::string_view s);
// A session id as a subject token and a directory name: [A-Za-z0-9_-]{1,64}.
bool valid_sid(std::string_view sid);
// hvtrace.<sensor>.<vm>.<eventid> (eventid's dots kept as token separators, each token sanitized).
std::string event_subject(std::string_view sensor, std::string_view vm, std::string_view eventid);
// hvtrace.<sensor>.<vm>.file.<sid>.<transcript|cast>
std::string file_subject(std::string_view sensor, std::string_view vm, std::string_view sid, std::string_view name);
// The files a session publishes when it closes (and the only names the collector writes).
bool publishable_file(std::string_view name);

// An events.jsonl object as a message: body = the object plus "vm"; headers: id "<sid>:<seq>".
// nullopt when the object has no valid session id.
std::optional<Message> event_message(const nlohmann::json& event, std::string_view vm, std::uint64_t seq);
// The events.jsonl line a collector writes for an event message's body: the object without "vm",
// serialized as lib/session's writer does (so the collected file equals the source).
std::optional<std::string> event_line(std::string_view body);

// A finished file as chunks of at most chunk_bytes (an empty file is one empty final chunk).
std::vector<Message> file_messages(std::string_view sensor, std::string_view vm, std::string_view sid, std::string_view name,
                                   std::string_view content, std::size_t chunk_bytes = kDefaultChunkBytes);

// "nats://HOST:PORT[,nats://HOST:PORT...]" (also tls://; port default 4222). Throws UserError
// naming what is wrong.
std::vector<std::string> parse_urls(std::string_view list);

}  // namespace hvtrace::publish
